//! What the gateway reads and writes besides JSON: the method names it serves, wire times
//! (`yyyy-MM-dd HH:mm:ss`, GMT+8) and the plain shape's response key.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::macros::{format_description, offset};
use time::{OffsetDateTime, PrimitiveDateTime};

/// The methods the simulator serves.
pub mod method {
    pub const CONSUME: &str = "taobao.tmc.messages.consume";
    pub const CONFIRM: &str = "taobao.tmc.messages.confirm";
    pub const USER_PERMIT: &str = "taobao.tmc.user.permit";
    pub const USER_CANCEL: &str = "taobao.tmc.user.cancel";
    pub const USER_GET: &str = "taobao.tmc.user.get";
    pub const GROUPS_GET: &str = "taobao.tmc.groups.get";
    pub const GROUP_ADD: &str = "taobao.tmc.group.add";
    pub const GROUP_DELETE: &str = "taobao.tmc.group.delete";
    pub const QUEUE_GET: &str = "taobao.tmc.queue.get";
    pub const JMS_USER_ADD: &str = "taobao.jushita.jms.user.add";
    pub const JMS_USER_GET: &str = "taobao.jushita.jms.user.get";
    pub const JMS_USER_DELETE: &str = "taobao.jushita.jms.user.delete";
}

const WIRE_FORMAT: &[time::format_description::FormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");

/// An instant as the platform writes it: `yyyy-MM-dd HH:mm:ss` in GMT+8.
pub fn wire_timestamp(at: SystemTime) -> String {
    OffsetDateTime::from(at)
        .to_offset(offset!(+8))
        .format(WIRE_FORMAT)
        .unwrap_or_else(|_| "1970-01-01 08:00:00".to_owned())
}

/// A wire time read back into an instant, or `None` when it is not one.
pub fn parse_wire_time(s: &str) -> Option<SystemTime> {
    let t = PrimitiveDateTime::parse(s.trim(), WIRE_FORMAT).ok()?;
    Some(t.assume_offset(offset!(+8)).into())
}

/// Milliseconds since the Unix epoch (zero before it).
pub fn epoch_millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// The root key of a method's plain (not simplified) answer:
/// `taobao.tmc.messages.consume` answers under `tmc_messages_consume_response`.
pub fn response_key(method: &str) -> String {
    let name = method.strip_prefix("taobao.").unwrap_or(method);
    format!("{}_response", name.replace('.', "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Noon in GMT+8 is 04:00 UTC, both ways.
    #[test]
    fn wire_times_are_gmt8() {
        let noon = UNIX_EPOCH + Duration::from_secs(1_451_620_800);
        assert_eq!(wire_timestamp(noon), "2016-01-01 12:00:00");
        assert_eq!(parse_wire_time("2016-01-01 12:00:00"), Some(noon));
        assert_eq!(parse_wire_time("2016-01-01T12:00:00"), None);
    }

    #[test]
    fn response_keys() {
        assert_eq!(
            response_key(method::CONSUME),
            "tmc_messages_consume_response"
        );
        assert_eq!(
            response_key(method::JMS_USER_GET),
            "jushita_jms_user_get_response"
        );
    }
}
