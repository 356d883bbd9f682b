//! `ProblemDetails` (TS 29.571, RFC 7807): the body of every SBI error response, sent as
//! [`PROBLEM_JSON`].

use serde::{Deserialize, Serialize};

/// Media type of a [`ProblemDetails`] body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Media type of every other SBI body.
pub const JSON: &str = "application/json";

/// Application error causes of TS 29.500 (table 5.2.7.2-1) that this project sends.
pub mod cause {
    /// 400: the body is not valid JSON or does not match the schema.
    pub const INVALID_MSG_FORMAT: &str = "INVALID_MSG_FORMAT";
    /// 400: a mandatory information element has a wrong value.
    pub const MANDATORY_IE_INCORRECT: &str = "MANDATORY_IE_INCORRECT";
    /// 400: a mandatory information element is missing.
    pub const MANDATORY_IE_MISSING: &str = "MANDATORY_IE_MISSING";
    /// 400: an optional information element has a wrong value.
    pub const OPTIONAL_IE_INCORRECT: &str = "OPTIONAL_IE_INCORRECT";
}

/// `ProblemDetails`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProblemDetails {
    /// URI reference identifying the problem type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub r#type: Option<String>,
    /// Short human-readable summary of the problem type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The HTTP status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Human-readable explanation of this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// URI reference identifying this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Application error cause (see [`cause`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// The request parameters that were wrong.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_params: Vec<InvalidParam>,
    /// Features supported by the sender (hex string).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supported_features: Option<String>,
    /// `AccessTokenErr` of TS 29.510 (kept as raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_error: Option<serde_json::Value>,
    /// `AccessTokenReq` of TS 29.510 (kept as raw JSON).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_request: Option<serde_json::Value>,
    /// NF instance id of the NRF that issued a rejected token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nrf_id: Option<String>,
}

/// `InvalidParam`: one wrong request parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InvalidParam {
    /// The attribute, as a JSON pointer into the request body (e.g. `/eventSubs/0/event`).
    pub param: String,
    /// Why it is wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl InvalidParam {
    /// `param` is wrong because of `reason`.
    pub fn new(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            reason: Some(reason.into()),
        }
    }
}

/// The parameters a request got wrong, collected while checking it, and the application error
/// cause of the first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InvalidParams {
    cause: Option<&'static str>,
    params: Vec<InvalidParam>,
}

/// A refused request: its `detail` (every parameter with its reason), `cause` and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub detail: String,
    pub cause: &'static str,
    pub invalid_params: Vec<InvalidParam>,
}

impl InvalidParams {
    /// Nothing wrong yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `param` (a JSON pointer) is wrong because of `reason` (application error `cause`).
    pub fn add(
        &mut self,
        cause: &'static str,
        param: impl Into<String>,
        reason: impl Into<String>,
    ) {
        self.cause.get_or_insert(cause);
        self.params.push(InvalidParam::new(param, reason));
    }

    /// `Ok` if nothing was wrong, else the refusal naming every parameter.
    pub fn check(self) -> Result<(), Refusal> {
        let Some(cause) = self.cause else {
            return Ok(());
        };
        Err(Refusal {
            detail: self
                .params
                .iter()
                .map(|p| format!("{}: {}", p.param, p.reason.as_deref().unwrap_or("invalid")))
                .collect::<Vec<_>>()
                .join("; "),
            cause,
            invalid_params: self.params,
        })
    }
}

impl From<Refusal> for ProblemDetails {
    fn from(r: Refusal) -> Self {
        ProblemDetails::bad_request(r.detail, r.invalid_params).with_cause(r.cause)
    }
}

impl ProblemDetails {
    /// A problem with `status`, its standard `title` and a `detail` text.
    pub fn new(status: u16, title: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            title: Some(title.into()),
            status: Some(status),
            detail: Some(detail.into()),
            ..Self::default()
        }
    }

    /// 400 Bad Request: the body was malformed (cause `INVALID_MSG_FORMAT`), with the parameters
    /// at fault (may be empty).
    pub fn bad_request(detail: impl Into<String>, invalid_params: Vec<InvalidParam>) -> Self {
        Self {
            cause: Some(cause::INVALID_MSG_FORMAT.to_owned()),
            invalid_params,
            ..Self::new(400, "Bad Request", detail)
        }
    }

    /// 401 Unauthorized.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(401, "Unauthorized", detail)
    }

    /// 404 Not Found.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "Not Found", detail)
    }

    /// The same problem with the application error `cause` replaced.
    #[must_use]
    pub fn with_cause(self, cause: impl Into<String>) -> Self {
        Self {
            cause: Some(cause.into()),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_request_wire_form() {
        let problem = ProblemDetails::bad_request(
            "unknown field `foo`",
            vec![InvalidParam::new("/foo", "unknown field")],
        );
        let json = serde_json::to_value(&problem).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({
                "title": "Bad Request",
                "status": 400,
                "detail": "unknown field `foo`",
                "cause": "INVALID_MSG_FORMAT",
                "invalidParams": [{"param": "/foo", "reason": "unknown field"}],
            })
        );
    }

    #[test]
    fn invalid_params_name_every_parameter_and_keep_the_first_cause() {
        assert_eq!(InvalidParams::new().check(), Ok(()));
        let mut bad = InvalidParams::new();
        bad.add(cause::MANDATORY_IE_MISSING, "/a", "missing");
        bad.add(cause::OPTIONAL_IE_INCORRECT, "/b", "wrong");
        let refusal = bad.check().expect_err("refused");
        assert_eq!(refusal.detail, "/a: missing; /b: wrong");
        assert_eq!(refusal.cause, cause::MANDATORY_IE_MISSING);
        let problem = ProblemDetails::from(refusal);
        assert_eq!(problem.status, Some(400));
        assert_eq!(problem.cause.as_deref(), Some("MANDATORY_IE_MISSING"));
        assert_eq!(problem.invalid_params.len(), 2);
    }

    #[test]
    fn not_found_has_no_cause() {
        let problem = ProblemDetails::not_found("no subscription sub-1");
        assert_eq!(problem.status, Some(404));
        assert_eq!(problem.cause, None);
        let json = serde_json::to_value(ProblemDetails::unauthorized("no token")).expect("json");
        assert_eq!(json["status"], 401);
        assert_eq!(json.get("invalidParams"), None);
    }
}
