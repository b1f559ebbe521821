//! The AWS JSON 1.0 wire shapes shared by both backends: targets, error answers, answers.

use bytes::Bytes;
use serde_json::{json, Value};

/// Which service a request is for, from its `X-Amz-Target` prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    Sqs,
    DynamoDb,
    /// No target, or one of a service this fake does not know: forwarded untouched to moto.
    Other,
}

/// `AmazonSQS.SendMessageBatch` → (Sqs, "SendMessageBatch").
pub fn parse_target(target: Option<&str>) -> (Service, String) {
    let Some(t) = target else {
        return (Service::Other, "Unknown".to_owned());
    };
    match t.split_once('.') {
        Some(("AmazonSQS", op)) => (Service::Sqs, op.to_owned()),
        Some(("DynamoDB_20120810", op)) => (Service::DynamoDb, op.to_owned()),
        Some((_, op)) => (Service::Other, op.to_owned()),
        None => (Service::Other, t.to_owned()),
    }
}

/// One HTTP answer, before it is written (or withheld).
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Answer {
    /// HTTP 200 with an AWS JSON 1.0 body.
    pub fn ok(body: &Value) -> Self {
        Self::json(200, body, Vec::new())
    }

    pub fn json(status: u16, body: &Value, mut headers: Vec<(String, String)>) -> Self {
        headers.push((
            "content-type".to_owned(),
            "application/x-amz-json-1.0".to_owned(),
        ));
        Self {
            status,
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// An error a service answers with, in the service's own spelling.
#[derive(Clone, Debug, PartialEq)]
pub struct AwsError {
    pub status: u16,
    /// The modelled shape name: `__type` is `<namespace>#<shape>`.
    pub shape: &'static str,
    /// For SQS, the legacy query code sent in `x-amzn-query-error`, which the SDK prefers.
    pub query_code: Option<&'static str>,
    /// `Sender` or `Receiver` (SQS only).
    pub sender: bool,
    pub message: String,
    /// Extra fields (DynamoDB's `Item` on a failed condition).
    pub extra: Option<(String, Value)>,
}

impl AwsError {
    fn new(status: u16, shape: &'static str, query_code: Option<&'static str>, msg: &str) -> Self {
        Self {
            status,
            shape,
            query_code,
            sender: status < 500,
            message: msg.to_owned(),
            extra: None,
        }
    }

    // SQS errors (JSON protocol with query-compatible codes).

    pub fn sqs_throttled() -> Self {
        Self::new(
            400,
            "RequestThrottled",
            Some("RequestThrottled"),
            "Request is throttled.",
        )
    }
    pub fn sqs_internal() -> Self {
        Self::new(
            500,
            "InternalError",
            Some("InternalError"),
            "We encountered an internal error. Please try again.",
        )
    }
    pub fn sqs_no_queue() -> Self {
        Self::new(
            400,
            "QueueDoesNotExist",
            Some("AWS.SimpleQueueService.NonExistentQueue"),
            "The specified queue does not exist.",
        )
    }
    pub fn sqs_queue_exists(msg: &str) -> Self {
        Self::new(400, "QueueNameExists", Some("QueueAlreadyExists"), msg)
    }
    pub fn sqs_empty_batch() -> Self {
        Self::new(
            400,
            "EmptyBatchRequest",
            Some("AWS.SimpleQueueService.EmptyBatchRequest"),
            "There should be at least one SendMessageBatchRequestEntry in the request.",
        )
    }
    pub fn sqs_too_many_entries() -> Self {
        Self::new(
            400,
            "TooManyEntriesInBatchRequest",
            Some("AWS.SimpleQueueService.TooManyEntriesInBatchRequest"),
            "Maximum number of entries per request are 10.",
        )
    }
    pub fn sqs_ids_not_distinct() -> Self {
        Self::new(
            400,
            "BatchEntryIdsNotDistinct",
            Some("AWS.SimpleQueueService.BatchEntryIdsNotDistinct"),
            "Two or more batch entries in the request have the same Id.",
        )
    }
    pub fn sqs_invalid_entry_id(id: &str) -> Self {
        Self::new(
            400,
            "InvalidBatchEntryId",
            Some("AWS.SimpleQueueService.InvalidBatchEntryId"),
            &format!("A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long. Got {id:?}."),
        )
    }
    pub fn sqs_batch_too_long(len: usize) -> Self {
        Self::new(
            400,
            "BatchRequestTooLong",
            Some("AWS.SimpleQueueService.BatchRequestTooLong"),
            &format!(
                "Batch requests cannot be longer than 1048576 bytes. You have sent {len} bytes."
            ),
        )
    }
    pub fn sqs_invalid_contents() -> Self {
        Self::new(
            400,
            "InvalidMessageContents",
            Some("InvalidMessageContents"),
            "Invalid characters found. Valid unicode characters are #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF",
        )
    }
    pub fn sqs_receipt_invalid() -> Self {
        Self::new(
            400,
            "ReceiptHandleIsInvalid",
            Some("ReceiptHandleIsInvalid"),
            "The input receipt handle is invalid.",
        )
    }
    pub fn sqs_invalid_parameter(msg: &str) -> Self {
        Self::new(
            400,
            "InvalidParameterValue",
            Some("InvalidParameterValue"),
            msg,
        )
    }
    pub fn sqs_missing_parameter(name: &str) -> Self {
        Self::new(
            400,
            "MissingParameter",
            Some("MissingParameter"),
            &format!("The request must contain the parameter {name}."),
        )
    }
    pub fn sqs_unsupported(op: &str) -> Self {
        Self::new(
            400,
            "UnsupportedOperation",
            Some("AWS.SimpleQueueService.UnsupportedOperation"),
            &format!("{op} is not supported by the fake-aws memory backend."),
        )
    }

    // DynamoDB errors.

    pub fn ddb_throughput() -> Self {
        Self::new(
            400,
            "ProvisionedThroughputExceededException",
            None,
            "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API.",
        )
    }
    pub fn ddb_throttling() -> Self {
        Self::new(
            400,
            "ThrottlingException",
            None,
            "Rate of requests exceeds the allowed throughput.",
        )
    }
    pub fn ddb_internal() -> Self {
        Self::new(500, "InternalServerError", None, "Internal server error")
    }
    pub fn ddb_validation(msg: impl AsRef<str>) -> Self {
        Self::new(400, "ValidationException", None, msg.as_ref())
    }
    pub fn ddb_not_found() -> Self {
        Self::new(
            400,
            "ResourceNotFoundException",
            None,
            "Requested resource not found",
        )
    }
    pub fn ddb_in_use(table: &str) -> Self {
        Self::new(
            400,
            "ResourceInUseException",
            None,
            &format!("Table already exists: {table}"),
        )
    }
    pub fn ddb_condition_failed(old: Option<Value>) -> Self {
        let mut e = Self::new(
            400,
            "ConditionalCheckFailedException",
            None,
            "The conditional request failed",
        );
        e.extra = old.map(|item| ("Item".to_owned(), item));
        e
    }
    pub fn ddb_unknown_operation(op: &str) -> Self {
        Self::new(
            400,
            "UnknownOperationException",
            None,
            &format!("{op} is not supported by the fake-aws memory backend."),
        )
    }

    /// The answer as `service` writes it.
    pub fn answer(&self, service: Service) -> Answer {
        let (namespace, mut headers) = match service {
            Service::DynamoDb => ("com.amazonaws.dynamodb.v20120810", Vec::new()),
            _ => {
                let fault = if self.sender { "Sender" } else { "Receiver" };
                let headers = self
                    .query_code
                    .map(|c| vec![("x-amzn-query-error".to_owned(), format!("{c};{fault}"))])
                    .unwrap_or_default();
                ("com.amazonaws.sqs", headers)
            }
        };
        let mut body = json!({
            "__type": format!("{namespace}#{}", self.shape),
            "message": self.message,
        });
        if let (Some((k, v)), Some(obj)) = (&self.extra, body.as_object_mut()) {
            obj.insert(k.clone(), v.clone());
        }
        headers.push(("x-amzn-requestid".to_owned(), "fake-aws".to_owned()));
        Answer::json(self.status, &body, headers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Targets split into service and operation; unknown prefixes are passed through as Other.
    #[test]
    fn targets_name_service_and_operation() {
        assert_eq!(
            parse_target(Some("AmazonSQS.SendMessageBatch")),
            (Service::Sqs, "SendMessageBatch".to_owned())
        );
        assert_eq!(
            parse_target(Some("DynamoDB_20120810.PutItem")),
            (Service::DynamoDb, "PutItem".to_owned())
        );
        assert_eq!(parse_target(None).0, Service::Other);
        assert_eq!(
            parse_target(Some("Kinesis_20131202.PutRecord")).0,
            Service::Other
        );
    }

    /// SQS errors carry the query code and fault in `x-amzn-query-error`, as the SDK reads them.
    #[test]
    fn sqs_error_carries_query_error_header() {
        let a = AwsError::sqs_no_queue().answer(Service::Sqs);
        assert_eq!(a.status, 400);
        assert!(a.headers.contains(&(
            "x-amzn-query-error".to_owned(),
            "AWS.SimpleQueueService.NonExistentQueue;Sender".to_owned()
        )));
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(body["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    }

    /// A failed DynamoDB condition carries the old item beside the message.
    #[test]
    fn condition_failure_carries_old_item() {
        let old = json!({"pk": {"S": "1"}});
        let a = AwsError::ddb_condition_failed(Some(old.clone())).answer(Service::DynamoDb);
        let body: Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            body["__type"],
            "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"
        );
        assert_eq!(body["Item"], old);
    }
}
