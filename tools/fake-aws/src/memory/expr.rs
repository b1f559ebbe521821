//! A small, exact subset of DynamoDB expressions, for the memory backend.
//!
//! Supported:
//! - conditions: `attribute_exists(p)`, `attribute_not_exists(p)`, `a = b`, `a <> b`, `a < b`,
//!   `a <= b`, `a > b`, `a >= b` (operands are paths or `:values`), `AND`, `OR`, `NOT`,
//!   parentheses; precedence NOT > AND > OR, as in DynamoDB;
//! - updates: `SET a = :v, b = c` and `REMOVE a, b` (each clause at most once);
//! - projections: `a, #b`.
//!
//! Paths are top-level attribute names or `#name` placeholders. Anything else (nested paths,
//! `BETWEEN`, `IN`, `begins_with`, `size`, arithmetic, `ADD`, `DELETE`, `if_not_exists`, ...)
//! is a `ValidationException` naming what is unsupported: never silently true.
//!
//! Semantics follow DynamoDB: ordering comparisons need both sides present and of the same type
//! (N numerically, S and B by bytes), otherwise they are false; `=` is false and `<>` true when
//! a side is missing or the types differ. Placeholders must all be defined, and all be used.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use serde_json::{Map, Value};

/// An item: attribute name → AttributeValue JSON (`{"S": "x"}`, `{"N": "1"}`, ...).
pub type Item = Map<String, Value>;

/// Why an expression was refused; the text is the `ValidationException` message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExprError(pub String);

/// A few of DynamoDB's reserved words (it has about 570); a bare use of one is refused, as
/// DynamoDB refuses it, to catch the commonest mistake. The rest are not checked.
const RESERVED: &[&str] = &[
    "COUNT",
    "DATA",
    "DATE",
    "GROUP",
    "INDEX",
    "KEY",
    "NAME",
    "ORDER",
    "OWNER",
    "SIZE",
    "STATUS",
    "TABLE",
    "TIME",
    "TIMESTAMP",
    "TTL",
    "TYPE",
    "USER",
    "VALUE",
];

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Name(String),
    Value(String),
    LParen,
    RParen,
    Comma,
    Cmp(CmpOp),
    /// A character this subset does not handle (`.`, `[`, `+`, `-`, ...).
    Other(char),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// One side of a comparison, placeholders resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Path(String),
    Value(Value),
}

/// A parsed condition, placeholders resolved.
#[derive(Clone, Debug, PartialEq)]
pub enum Cond {
    Or(Box<Cond>, Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    Exists(String),
    NotExists(String),
    Cmp(Operand, CmpOp, Operand),
}

/// A parsed update: `SET` assignments, then `REMOVE`s.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Update {
    pub set: Vec<(String, Operand)>,
    pub remove: Vec<String>,
}

fn tokenize(src: &str, what: &str) -> Result<Vec<Tok>, ExprError> {
    let mut out = Vec::new();
    let mut chars = src.char_indices().peekable();
    let word = |chars: &mut std::iter::Peekable<std::str::CharIndices>, first: usize| {
        let mut end = first;
        while let Some(&(i, c)) = chars.peek() {
            if c.is_ascii_alphanumeric() || c == '_' {
                end = i + c.len_utf8();
                chars.next();
            } else {
                break;
            }
        }
        end
    };
    while let Some((i, c)) = chars.next() {
        let tok = match c {
            c if c.is_whitespace() => continue,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => Tok::Cmp(CmpOp::Eq),
            '<' => match chars.peek() {
                Some((_, '=')) => {
                    chars.next();
                    Tok::Cmp(CmpOp::Le)
                }
                Some((_, '>')) => {
                    chars.next();
                    Tok::Cmp(CmpOp::Ne)
                }
                _ => Tok::Cmp(CmpOp::Lt),
            },
            '>' => match chars.peek() {
                Some((_, '=')) => {
                    chars.next();
                    Tok::Cmp(CmpOp::Ge)
                }
                _ => Tok::Cmp(CmpOp::Gt),
            },
            '#' | ':' => {
                let end = word(&mut chars, i + 1);
                if end == i + 1 {
                    return Err(ExprError(format!(
                        "Invalid {what}: Syntax error; token: \"{c}\", near: \"{src}\""
                    )));
                }
                let name = src[i..end].to_owned();
                if c == '#' {
                    Tok::Name(name)
                } else {
                    Tok::Value(name)
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let end = word(&mut chars, i + c.len_utf8());
                Tok::Ident(src[i..end].to_owned())
            }
            other => Tok::Other(other),
        };
        out.push(tok);
    }
    Ok(out)
}

fn is_kw(t: Option<&Tok>, kw: &str) -> bool {
    matches!(t, Some(Tok::Ident(s)) if s.eq_ignore_ascii_case(kw))
}

/// Resolves placeholders and remembers which were used, across all expressions of one request.
#[derive(Debug)]
pub struct ExprContext<'a> {
    names: Option<&'a Map<String, Value>>,
    values: Option<&'a Map<String, Value>>,
    used_names: BTreeSet<String>,
    used_values: BTreeSet<String>,
}

struct Parser<'c, 'a> {
    ctx: &'c mut ExprContext<'a>,
    toks: Vec<Tok>,
    pos: usize,
    what: &'static str,
}

impl<'a> ExprContext<'a> {
    /// `names` and `values` are the request's `ExpressionAttributeNames` / `...Values`.
    pub fn new(
        names: Option<&'a Map<String, Value>>,
        values: Option<&'a Map<String, Value>>,
    ) -> Self {
        Self {
            names,
            values,
            used_names: BTreeSet::new(),
            used_values: BTreeSet::new(),
        }
    }

    fn parser(&mut self, src: &str, what: &'static str) -> Result<Parser<'_, 'a>, ExprError> {
        let toks = tokenize(src, what)?;
        if toks.is_empty() {
            return Err(ExprError(format!(
                "Invalid {what}: The expression can not be empty;"
            )));
        }
        Ok(Parser {
            ctx: self,
            toks,
            pos: 0,
            what,
        })
    }

    /// Parses a `ConditionExpression` (or `FilterExpression`).
    pub fn condition(&mut self, src: &str) -> Result<Cond, ExprError> {
        let mut p = self.parser(src, "ConditionExpression")?;
        let c = p.or()?;
        p.end()?;
        Ok(c)
    }

    /// Parses an `UpdateExpression`.
    pub fn update(&mut self, src: &str) -> Result<Update, ExprError> {
        let mut p = self.parser(src, "UpdateExpression")?;
        let u = p.update()?;
        p.end()?;
        Ok(u)
    }

    /// Parses a `ProjectionExpression`.
    pub fn projection(&mut self, src: &str) -> Result<Vec<String>, ExprError> {
        let mut p = self.parser(src, "ProjectionExpression")?;
        let mut out = vec![p.path()?];
        while p.peek() == Some(&Tok::Comma) {
            p.pos += 1;
            out.push(p.path()?);
        }
        p.end()?;
        Ok(out)
    }

    /// Fails if a supplied placeholder was not used by any expression, as DynamoDB does.
    pub fn finish(self) -> Result<(), ExprError> {
        let unused = |given: Option<&Map<String, Value>>, used: &BTreeSet<String>| {
            given
                .map(|m| {
                    m.keys()
                        .filter(|k| !used.contains(*k))
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        };
        let names = unused(self.names, &self.used_names);
        if !names.is_empty() {
            return Err(ExprError(format!(
                "Value provided in ExpressionAttributeNames unused in expressions: keys: {{{}}}",
                names.join(", ")
            )));
        }
        let values = unused(self.values, &self.used_values);
        if !values.is_empty() {
            return Err(ExprError(format!(
                "Value provided in ExpressionAttributeValues unused in expressions: keys: {{{}}}",
                values.join(", ")
            )));
        }
        Ok(())
    }
}

impl Parser<'_, '_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn err(&self, detail: impl std::fmt::Display) -> ExprError {
        ExprError(format!("Invalid {}: {detail}", self.what))
    }

    fn unsupported(&self, what: impl std::fmt::Display) -> ExprError {
        self.err(format_args!(
            "{what} is not supported by the fake-aws memory backend"
        ))
    }

    fn describe(t: Option<&Tok>) -> String {
        match t {
            None => "<end of expression>".to_owned(),
            Some(Tok::Ident(s) | Tok::Name(s) | Tok::Value(s)) => s.clone(),
            Some(Tok::LParen) => "(".to_owned(),
            Some(Tok::RParen) => ")".to_owned(),
            Some(Tok::Comma) => ",".to_owned(),
            Some(Tok::Cmp(op)) => format!("{op:?}"),
            Some(Tok::Other(c)) => c.to_string(),
        }
    }

    fn syntax(&self) -> ExprError {
        let t = self.peek();
        match t {
            Some(Tok::Other(c)) => self.unsupported(format_args!("the token \"{c}\"")),
            _ => self.err(format_args!(
                "Syntax error; token: \"{}\"",
                Self::describe(t)
            )),
        }
    }

    fn end(&self) -> Result<(), ExprError> {
        if self.pos < self.toks.len() {
            return Err(self.syntax());
        }
        Ok(())
    }

    fn expect(&mut self, t: Tok) -> Result<(), ExprError> {
        if self.peek() == Some(&t) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.syntax())
        }
    }

    /// A top-level attribute name, bare or through a `#name` placeholder.
    fn path(&mut self) -> Result<String, ExprError> {
        let name = match self.peek().cloned() {
            Some(Tok::Ident(s)) => {
                if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(&s)) {
                    return Err(self.err(format_args!(
                        "Attribute name is a reserved keyword; reserved keyword: {s}"
                    )));
                }
                self.pos += 1;
                s
            }
            Some(Tok::Name(p)) => {
                let resolved = self
                    .ctx
                    .names
                    .and_then(|m| m.get(&p))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        self.err(format_args!(
                            "An expression attribute name used in the document path is not defined; attribute name: {p}"
                        ))
                    })?
                    .to_owned();
                self.ctx.used_names.insert(p);
                self.pos += 1;
                resolved
            }
            _ => return Err(self.syntax()),
        };
        if matches!(self.peek(), Some(Tok::Other('.' | '['))) {
            return Err(self.unsupported("a nested document path"));
        }
        Ok(name)
    }

    fn operand(&mut self) -> Result<Operand, ExprError> {
        match self.peek().cloned() {
            Some(Tok::Value(p)) => {
                let v = self
                    .ctx
                    .values
                    .and_then(|m| m.get(&p))
                    .cloned()
                    .ok_or_else(|| {
                        self.err(format_args!(
                            "An expression attribute value used in expression is not defined; attribute value: {p}"
                        ))
                    })?;
                self.ctx.used_values.insert(p);
                self.pos += 1;
                Ok(Operand::Value(v))
            }
            Some(Tok::Ident(f)) if self.toks.get(self.pos + 1) == Some(&Tok::LParen) => {
                Err(self.unsupported(format_args!("the function {f}")))
            }
            _ => {
                let p = self.path()?;
                if matches!(self.peek(), Some(Tok::Other('+' | '-'))) {
                    return Err(self.unsupported("arithmetic"));
                }
                Ok(Operand::Path(p))
            }
        }
    }

    fn or(&mut self) -> Result<Cond, ExprError> {
        let mut left = self.and()?;
        while is_kw(self.peek(), "OR") {
            self.pos += 1;
            let right = self.and()?;
            left = Cond::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Cond, ExprError> {
        let mut left = self.not()?;
        while is_kw(self.peek(), "AND") {
            self.pos += 1;
            let right = self.not()?;
            left = Cond::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn not(&mut self) -> Result<Cond, ExprError> {
        if is_kw(self.peek(), "NOT") {
            self.pos += 1;
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Cond, ExprError> {
        match self.peek().cloned() {
            Some(Tok::LParen) => {
                self.pos += 1;
                let c = self.or()?;
                self.expect(Tok::RParen)?;
                Ok(c)
            }
            Some(Tok::Ident(f)) if self.toks.get(self.pos + 1) == Some(&Tok::LParen) => {
                let exists = match f.as_str() {
                    "attribute_exists" => true,
                    "attribute_not_exists" => false,
                    _ => return Err(self.unsupported(format_args!("the function {f}"))),
                };
                self.pos += 2;
                let p = self.path()?;
                self.expect(Tok::RParen)?;
                Ok(if exists {
                    Cond::Exists(p)
                } else {
                    Cond::NotExists(p)
                })
            }
            _ => {
                let left = self.operand()?;
                if is_kw(self.peek(), "BETWEEN") || is_kw(self.peek(), "IN") {
                    return Err(self.unsupported(format_args!(
                        "the operator {}",
                        Self::describe(self.peek()).to_uppercase()
                    )));
                }
                let op = match self.next() {
                    Some(Tok::Cmp(op)) => op,
                    _ => {
                        self.pos -= 1;
                        return Err(self.syntax());
                    }
                };
                let right = self.operand()?;
                if op != CmpOp::Eq && op != CmpOp::Ne {
                    for side in [&left, &right] {
                        if let Operand::Value(v) = side {
                            let t = av_type(v);
                            if !matches!(t, "N" | "S" | "B") {
                                return Err(self.err(format_args!(
                                    "Incorrect operand type for operator or function; operator or function: {op:?}, operand type: {t}"
                                )));
                            }
                        }
                    }
                }
                Ok(Cond::Cmp(left, op, right))
            }
        }
    }

    fn update(&mut self) -> Result<Update, ExprError> {
        let mut u = Update::default();
        let (mut seen_set, mut seen_remove) = (false, false);
        while let Some(Tok::Ident(kw)) = self.peek().cloned() {
            let kw = kw.to_ascii_uppercase();
            let seen = match kw.as_str() {
                "SET" => &mut seen_set,
                "REMOVE" => &mut seen_remove,
                "ADD" | "DELETE" => return Err(self.unsupported(format_args!("the {kw} clause"))),
                _ => return Err(self.syntax()),
            };
            if *seen {
                return Err(self.err(format_args!(
                    "The \"{kw}\" section can only be used once in an update expression;"
                )));
            }
            *seen = true;
            self.pos += 1;
            loop {
                let p = self.path()?;
                if kw == "SET" {
                    self.expect(Tok::Cmp(CmpOp::Eq))?;
                    u.set.push((p, self.operand()?));
                } else {
                    u.remove.push(p);
                }
                if self.peek() != Some(&Tok::Comma) {
                    break;
                }
                self.pos += 1;
            }
        }
        if u.set.is_empty() && u.remove.is_empty() {
            return Err(self.syntax());
        }
        let mut paths = BTreeSet::new();
        for p in u.set.iter().map(|(p, _)| p).chain(&u.remove) {
            if !paths.insert(p) {
                return Err(self.err(format_args!(
                    "Two document paths overlap with each other; must remove or rewrite one of these paths; path one: [{p}], path two: [{p}]"
                )));
            }
        }
        Ok(u)
    }
}

/// The type tag of an AttributeValue (`S`, `N`, ...), or `?` if malformed.
pub fn av_type(v: &Value) -> &str {
    v.as_object()
        .and_then(|o| o.keys().next())
        .map(String::as_str)
        .unwrap_or("?")
}

fn scalar(v: &Value) -> Option<(&str, &str)> {
    let o = v.as_object()?;
    let (t, x) = o.iter().next()?;
    Some((t.as_str(), x.as_str()?))
}

/// DynamoDB equality: numbers by value, sets regardless of order, the rest exactly.
pub fn av_equal(a: &Value, b: &Value) -> bool {
    match (scalar(a), scalar(b)) {
        (Some(("N", x)), Some(("N", y))) => compare_numbers(x, y) == Some(Ordering::Equal),
        _ => {
            let set = |v: &Value| -> Option<(String, BTreeSet<String>)> {
                let o = v.as_object()?;
                let (t, x) = o.iter().next()?;
                if !matches!(t.as_str(), "SS" | "NS" | "BS") {
                    return None;
                }
                let items = x.as_array()?.iter().filter_map(Value::as_str);
                let norm = |s: &str| {
                    if t == "NS" {
                        normalize_number(s).unwrap_or_else(|| s.to_owned())
                    } else {
                        s.to_owned()
                    }
                };
                Some((t.clone(), items.map(norm).collect()))
            };
            match (set(a), set(b)) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            }
        }
    }
}

/// Ordering of two values of the same scalar type (N, S, B); `None` otherwise.
pub fn av_order(a: &Value, b: &Value) -> Option<Ordering> {
    match (scalar(a)?, scalar(b)?) {
        (("N", x), ("N", y)) => compare_numbers(x, y),
        (("S", x), ("S", y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (("B", x), ("B", y)) => {
            let (x, y) = (super::base64_decode(x).ok()?, super::base64_decode(y).ok()?);
            Some(x.cmp(&y))
        }
        _ => None,
    }
}

/// A parsed decimal: `0.digits × 10^exp`, digits without leading or trailing zeros.
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    exp: i64,
}

fn parse_decimal(s: &str) -> Option<Decimal> {
    let s = s.trim();
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let (mantissa, e) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let all: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
    let lead = all.iter().take_while(|d| **d == 0).count();
    let digits: Vec<u8> = all[lead..].to_vec();
    let trail = digits.iter().rev().take_while(|d| **d == 0).count();
    let digits = digits[..digits.len() - trail].to_vec();
    if digits.is_empty() {
        return Some(Decimal {
            negative: false,
            digits,
            exp: 0,
        });
    }
    let exp = (int.len() as i64 - lead as i64).checked_add(e)?;
    Some(Decimal {
        negative,
        digits,
        exp,
    })
}

/// A canonical spelling of a number, so that `1.0` and `1` compare equal inside sets.
pub fn normalize_number(s: &str) -> Option<String> {
    let d = parse_decimal(s)?;
    let digits: String = d.digits.iter().map(|x| char::from(b'0' + x)).collect();
    Some(format!(
        "{}0.{}e{}",
        if d.negative { "-" } else { "" },
        digits,
        d.exp
    ))
}

/// Compares two DynamoDB numbers exactly (no floating point); `None` if either is malformed.
pub fn compare_numbers(a: &str, b: &str) -> Option<Ordering> {
    let (x, y) = (parse_decimal(a)?, parse_decimal(b)?);
    let sign = |d: &Decimal| -> i8 {
        if d.digits.is_empty() {
            0
        } else if d.negative {
            -1
        } else {
            1
        }
    };
    let (sx, sy) = (sign(&x), sign(&y));
    if sx != sy || sx == 0 {
        return Some(sx.cmp(&sy));
    }
    let magnitude = x.exp.cmp(&y.exp).then_with(|| x.digits.cmp(&y.digits));
    Some(if sx < 0 {
        magnitude.reverse()
    } else {
        magnitude
    })
}

/// Whether a string is a number DynamoDB would accept.
pub fn is_number(s: &str) -> bool {
    parse_decimal(s).is_some()
}

fn operand_value<'v>(o: &'v Operand, item: &'v Item) -> Option<&'v Value> {
    match o {
        Operand::Path(p) => item.get(p),
        Operand::Value(v) => Some(v),
    }
}

/// Evaluates a condition against an item (an empty item when there is none).
pub fn eval(c: &Cond, item: &Item) -> bool {
    match c {
        Cond::Or(a, b) => eval(a, item) || eval(b, item),
        Cond::And(a, b) => eval(a, item) && eval(b, item),
        Cond::Not(a) => !eval(a, item),
        Cond::Exists(p) => item.contains_key(p),
        Cond::NotExists(p) => !item.contains_key(p),
        Cond::Cmp(l, op, r) => {
            let (l, r) = (operand_value(l, item), operand_value(r, item));
            match op {
                CmpOp::Eq => matches!((l, r), (Some(a), Some(b)) if av_equal(a, b)),
                CmpOp::Ne => !matches!((l, r), (Some(a), Some(b)) if av_equal(a, b)),
                _ => {
                    let Some(ord) = l.zip(r).and_then(|(a, b)| av_order(a, b)) else {
                        return false;
                    };
                    match op {
                        CmpOp::Lt => ord == Ordering::Less,
                        CmpOp::Le => ord != Ordering::Greater,
                        CmpOp::Gt => ord == Ordering::Greater,
                        _ => ord != Ordering::Less,
                    }
                }
            }
        }
    }
}

/// Applies an update to a copy of `item`. A `SET a = b` whose `b` is absent is an error.
pub fn apply(u: &Update, item: &Item) -> Result<Item, ExprError> {
    let mut out = item.clone();
    for (p, o) in &u.set {
        let v = operand_value(o, item).cloned().ok_or_else(|| {
            ExprError(
                "The provided expression refers to an attribute that does not exist in the item"
                    .to_owned(),
            )
        })?;
        out.insert(p.clone(), v);
    }
    for p in &u.remove {
        out.remove(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    /// Parses and evaluates `src` with the given placeholders against `item`.
    fn check(src: &str, names: Value, values: Value, item: Value) -> Result<bool, ExprError> {
        let (names, values) = (map(names), map(values));
        let mut ctx = ExprContext::new(Some(&names), Some(&values));
        let c = ctx.condition(src)?;
        ctx.finish()?;
        Ok(eval(&c, &map(item)))
    }

    fn claim_item(expires: &str, status: &str, lease: &str) -> Value {
        json!({"pk": {"S": "m1"}, "expires_at": {"N": expires}, "status": {"S": status},
               "lease_until": {"N": lease}})
    }

    const CLAIM: &str =
        "attribute_not_exists(pk) OR expires_at < :now_s OR (#st = :claimed AND lease_until < :now_ms)";

    fn claim(item: Value) -> bool {
        check(
            CLAIM,
            json!({"#st": "status"}),
            json!({":now_s": {"N": "1000"}, ":now_ms": {"N": "1000000"}, ":claimed": {"S": "claimed"}}),
            item,
        )
        .unwrap()
    }

    /// The relay's claim condition holds when there is no item.
    #[test]
    fn claim_condition_holds_without_item() {
        assert!(claim(json!({})));
    }

    /// The claim condition fails on a live, done item.
    #[test]
    fn claim_condition_fails_on_live_done_item() {
        assert!(!claim(claim_item("2000", "done", "0")));
    }

    /// The claim condition holds once the item's expiry has passed.
    #[test]
    fn claim_condition_holds_on_expired_item() {
        assert!(claim(claim_item("999", "done", "0")));
    }

    /// The claim condition holds on a claim whose lease has ended, not on one still leased.
    #[test]
    fn claim_condition_follows_the_lease() {
        assert!(claim(claim_item("2000", "claimed", "999999")));
        assert!(!claim(claim_item("2000", "claimed", "1000001")));
    }

    /// `attribute_exists` is true exactly when the attribute is present.
    #[test]
    fn attribute_exists_checks_presence() {
        let item = json!({"a": {"S": "x"}});
        assert!(check("attribute_exists(a)", json!({}), json!({}), item.clone()).unwrap());
        assert!(!check("attribute_exists(b)", json!({}), json!({}), item).unwrap());
    }

    /// Numbers compare by value, not as strings.
    #[test]
    fn numbers_compare_numerically() {
        let item = json!({"n": {"N": "10"}});
        let v = |x: &str| json!({":v": {"N": x}});
        assert!(check("n > :v", json!({}), v("9"), item.clone()).unwrap());
        assert!(check("n = :v", json!({}), v("10.0"), item.clone()).unwrap());
        assert!(check("n >= :v", json!({}), v("1e1"), item.clone()).unwrap());
        assert!(check("n <= :v", json!({}), v("10"), item.clone()).unwrap());
        assert!(!check("n < :v", json!({}), v("-11"), item.clone()).unwrap());
        assert!(check("n <> :v", json!({}), v("100"), item).unwrap());
    }

    /// Strings compare by bytes.
    #[test]
    fn strings_compare_by_bytes() {
        let item = json!({"s": {"S": "b"}});
        assert!(check("s > :v", json!({}), json!({":v": {"S": "a"}}), item.clone()).unwrap());
        assert!(check(
            "s < :v",
            json!({}),
            json!({":v": {"S": "ba"}}),
            item.clone()
        )
        .unwrap());
        assert!(!check("s < :v", json!({}), json!({":v": {"S": "B"}}), item).unwrap());
    }

    /// A comparison with a missing attribute is false, except `<>`, which is true.
    #[test]
    fn missing_attribute_comparisons() {
        let v = json!({":v": {"N": "1"}});
        assert!(!check("a < :v", json!({}), v.clone(), json!({})).unwrap());
        assert!(!check("a = :v", json!({}), v.clone(), json!({})).unwrap());
        assert!(check("a <> :v", json!({}), v, json!({})).unwrap());
    }

    /// Ordering comparisons across types are false.
    #[test]
    fn ordering_across_types_is_false() {
        let item = json!({"a": {"S": "5"}});
        assert!(!check("a < :v", json!({}), json!({":v": {"N": "9"}}), item.clone()).unwrap());
        assert!(!check("a > :v", json!({}), json!({":v": {"N": "1"}}), item).unwrap());
    }

    /// NOT binds tighter than AND, which binds tighter than OR; parentheses override.
    #[test]
    fn precedence_is_not_and_or() {
        let item = json!({"a": {"N": "1"}});
        let t = "attribute_exists(a)";
        let f = "attribute_exists(z)";
        let e = |s: String| check(&s, json!({}), json!({}), item.clone()).unwrap();
        assert!(e(format!("{t} OR {f} AND {f}")));
        assert!(!e(format!("({t} OR {f}) AND {f}")));
        assert!(!e(format!("NOT {t} AND {t}")));
        assert!(e(format!("NOT ({f} AND {t})")));
        assert!(e(format!("not {f} and {t}")));
    }

    /// An undefined placeholder is an error naming it.
    #[test]
    fn undefined_placeholders_are_errors() {
        let e = check("#x = :v", json!({}), json!({":v": {"N": "1"}}), json!({})).unwrap_err();
        assert!(e.0.contains("#x"), "{e:?}");
        let e = check("a = :w", json!({}), json!({}), json!({})).unwrap_err();
        assert!(e.0.contains(":w"), "{e:?}");
    }

    /// A supplied placeholder that no expression uses is an error, as in DynamoDB.
    #[test]
    fn unused_placeholders_are_errors() {
        let e = check(
            "attribute_exists(a)",
            json!({}),
            json!({":spare": {"N": "1"}}),
            json!({}),
        )
        .unwrap_err();
        assert!(e.0.contains(":spare"), "{e:?}");
        let e = check(
            "attribute_exists(a)",
            json!({"#n": "a"}),
            json!({}),
            json!({}),
        )
        .unwrap_err();
        assert!(e.0.contains("#n"), "{e:?}");
    }

    /// Anything outside the subset is refused with a message naming it.
    #[test]
    fn unsupported_syntax_is_refused() {
        let v = json!({":v": {"S": "x"}, ":w": {"S": "y"}});
        for (src, needle) in [
            ("begins_with(a, :v)", "begins_with"),
            ("a BETWEEN :v AND :w", "BETWEEN"),
            ("a IN (:v, :w)", "IN"),
            ("a.b = :v", "nested"),
            ("size(a) = :v", "size"),
        ] {
            let e = check(src, json!({}), v.clone(), json!({})).unwrap_err();
            assert!(e.0.contains(needle), "{src}: {e:?}");
        }
    }

    /// Malformed expressions are syntax errors, not true.
    #[test]
    fn malformed_conditions_are_errors() {
        let v = json!({":v": {"S": "x"}});
        for src in [
            "a =",
            "(a = :v",
            "a = :v)",
            "a :v",
            "AND a = :v",
            "a = :v OR",
            "",
        ] {
            assert!(
                check(src, json!({}), v.clone(), json!({})).is_err(),
                "{src}"
            );
        }
    }

    /// Reserved words must go through `#name` placeholders.
    #[test]
    fn reserved_words_are_refused_bare() {
        let v = json!({":v": {"S": "x"}});
        let e = check("status = :v", json!({}), v.clone(), json!({})).unwrap_err();
        assert!(e.0.contains("reserved keyword"), "{e:?}");
        assert!(check("#s = :v", json!({"#s": "status"}), v, json!({})).is_ok());
    }

    /// Ordering against a non-scalar value is a type error.
    #[test]
    fn ordering_against_bool_is_refused() {
        let e = check(
            "a < :v",
            json!({}),
            json!({":v": {"BOOL": true}}),
            json!({}),
        )
        .unwrap_err();
        assert!(e.0.contains("operand type"), "{e:?}");
    }

    fn update(src: &str, names: Value, values: Value, item: Value) -> Result<Item, ExprError> {
        let (names, values) = (map(names), map(values));
        let mut ctx = ExprContext::new(Some(&names), Some(&values));
        let u = ctx.update(src)?;
        ctx.finish()?;
        apply(&u, &map(item))
    }

    /// SET assigns values and copies attributes; REMOVE deletes.
    #[test]
    fn update_sets_and_removes() {
        let out = update(
            "SET #st = :done, expires_at = :e, copy = lease_until REMOVE lease_until, #ow",
            json!({"#st": "status", "#ow": "owner"}),
            json!({":done": {"S": "done"}, ":e": {"N": "5"}}),
            json!({"pk": {"S": "1"}, "status": {"S": "claimed"}, "owner": {"S": "me"},
                   "lease_until": {"N": "9"}}),
        )
        .unwrap();
        assert_eq!(
            Value::Object(out),
            json!({"pk": {"S": "1"}, "status": {"S": "done"}, "expires_at": {"N": "5"},
                   "copy": {"N": "9"}})
        );
    }

    /// ADD, arithmetic, functions and repeated clauses are refused.
    #[test]
    fn unsupported_updates_are_refused() {
        let v = json!({":v": {"N": "1"}});
        for src in [
            "ADD a :v",
            "SET a = a + :v",
            "SET a = if_not_exists(a, :v)",
            "SET a = :v SET b = :v",
            "SET a = :v, a = :v",
        ] {
            assert!(
                update(src, json!({}), v.clone(), json!({})).is_err(),
                "{src}"
            );
        }
    }

    /// Exact decimal comparison handles signs, exponents, zeros and digits beyond f64.
    #[test]
    fn decimal_comparison_is_exact() {
        use Ordering::*;
        for (a, b, o) in [
            ("0", "-0", Equal),
            ("0.0", "0", Equal),
            ("-1", "0", Less),
            ("-2", "-1", Less),
            ("1.5", "1.25", Greater),
            ("1e3", "999", Greater),
            ("0.001", "1e-3", Equal),
            ("18446744073709551617", "18446744073709551616", Greater),
            ("100", "99.999", Greater),
        ] {
            assert_eq!(compare_numbers(a, b), Some(o), "{a} vs {b}");
        }
        assert_eq!(compare_numbers("abc", "1"), None);
        assert_eq!(compare_numbers("", "1"), None);
        assert_eq!(compare_numbers("1e9223372036854775807", "1"), None);
    }

    /// A projection lists top-level names, resolving placeholders.
    #[test]
    fn projection_lists_names() {
        let names = map(json!({"#s": "status"}));
        let mut ctx = ExprContext::new(Some(&names), None);
        assert_eq!(ctx.projection("pk, #s").unwrap(), vec!["pk", "status"]);
        assert!(ctx.finish().is_ok());
    }
}
