//! Every client-visible refusal of SPEC §3, and the one place that turns it into a response.
//!
//! Layers short-circuit with `Ok(reject.into_response())`, so the service handed to hyper never
//! fails. Descriptions are fixed strings chosen here: they never carry a library's error text
//! or anything taken from the request.

use http::header::{ALLOW, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

use crate::auth::validate::Reason;
use crate::body::{self, Body};
use crate::normalize::BadPath;

/// Response extension: the gateway refused the request, for this reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal(pub &'static str);

/// A refusal: the request ends here with the status SPEC §3 gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 400: the path has `%2F`, `%5C`, `\`, NUL, `..` above the root, or bad encoding.
    BadPath(BadPath),
    /// 400: the message framing is ambiguous (`Content-Length` with `Transfer-Encoding`,
    /// several `Content-Length` or `Host` headers); such a request never reaches an upstream.
    BadFraming,
    /// 404: no route matches the path.
    NoRoute,
    /// 405: a route's path matches but no route allows the method; `allow` lists those that do.
    MethodNotAllowed {
        /// Value of the `Allow` header.
        allow: HeaderValue,
    },
    /// 401: a protected route and no `Authorization: Bearer` header.
    MissingToken,
    /// 400: several credentials (two `Authorization` lines, or an `access_token` parameter);
    /// RFC 6750 §3.1 `invalid_request`.
    InvalidRequest,
    /// 401: the token was refused, for this reason.
    InvalidToken(Reason),
    /// 503: no signing key could be fetched yet; public routes keep working.
    KeysUnavailable,
    /// 429: the caller's bucket is empty; `retry_after` is in whole seconds, at least 1.
    RateLimited {
        /// Seconds until one more request would be allowed.
        retry_after: u64,
    },
    /// 403: a valid token, but none of the route's groups, or missing some of its scopes.
    Forbidden {
        /// The route's scopes the token lacks, space-separated; `None` when a group is missing.
        missing_scopes: Option<String>,
    },
    /// 502: the upstream refused the connection, reset it, or sent a broken response.
    UpstreamFailed,
    /// 504: the upstream did not send response headers within the route's `timeout`.
    UpstreamTimeout,
    /// 500: a bug; logged where it is built.
    Internal,
}

impl Reject {
    /// The fixed `error_description`, safe to log.
    pub fn description(&self) -> &'static str {
        self.parts().2
    }

    /// The fixed name used in metrics and the access log.
    pub fn metric_reason(&self) -> &'static str {
        match self {
            Reject::BadPath(_) => "bad_path",
            Reject::BadFraming => "bad_framing",
            Reject::NoRoute => "no_route",
            Reject::MethodNotAllowed { .. } => "method_not_allowed",
            Reject::MissingToken => "missing_token",
            Reject::InvalidRequest => "multiple_credentials",
            Reject::InvalidToken(reason) => reason.metric_name(),
            Reject::KeysUnavailable => "keys_unavailable",
            Reject::RateLimited { .. } => "rate_limited",
            Reject::Forbidden { .. } => "forbidden",
            Reject::UpstreamFailed => "upstream_failed",
            Reject::UpstreamTimeout => "upstream_timeout",
            Reject::Internal => "internal",
        }
    }

    /// Status, `error` code and fixed description.
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Reject::BadPath(why) => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                why.description(),
            ),
            Reject::BadFraming => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "ambiguous message framing",
            ),
            Reject::NoRoute => (StatusCode::NOT_FOUND, "not_found", "no route for this path"),
            Reject::MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            ),
            Reject::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
            ),
            Reject::InvalidRequest => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "exactly one bearer token, in the Authorization header",
            ),
            Reject::InvalidToken(reason) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                reason.description(),
            ),
            Reject::KeysUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "signing keys are not available yet",
            ),
            Reject::RateLimited { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests",
            ),
            Reject::Forbidden {
                missing_scopes: None,
            } => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the caller is in none of the route's groups",
            ),
            Reject::Forbidden {
                missing_scopes: Some(_),
            } => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the token lacks a scope the route requires",
            ),
            Reject::UpstreamFailed => (
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the upstream could not be reached",
            ),
            Reject::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the upstream did not answer in time",
            ),
            Reject::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal_error",
                "internal error",
            ),
        }
    }

    /// Builds the response: status, JSON body and the headers SPEC §3 asks for. The response
    /// carries a [`Refusal`] extension for the access log and metrics.
    pub fn into_response(self) -> Response<Body> {
        let (status, error, description) = self.parts();
        let refusal = Refusal(self.metric_reason());
        // Both strings are fixed ASCII without quotes or backslashes, so no escaping is needed.
        let json = format!(r#"{{"error":"{error}","error_description":"{description}"}}"#);
        let mut response = Response::new(body::full(json));
        *response.status_mut() = status;
        response.extensions_mut().insert(refusal);
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Reject::MissingToken => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="jwtgate""#),
                );
            }
            Reject::InvalidRequest => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Bearer realm="jwtgate", error="invalid_request""#),
                );
            }
            Reject::InvalidToken(_) => {
                // The description is a fixed ASCII string without quotes (see Reason).
                let value = format!(
                    r#"Bearer realm="jwtgate", error="invalid_token", error_description="{description}""#
                );
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Reject::MethodNotAllowed { allow } => {
                headers.insert(ALLOW, allow);
            }
            Reject::RateLimited { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after.max(1)));
            }
            Reject::Forbidden { missing_scopes } => {
                // Scope names were checked at load time to be RFC 6749 scope tokens: no quote,
                // backslash or space can break out of the quoted string.
                let value = match missing_scopes {
                    Some(scopes) => format!(
                        r#"Bearer realm="jwtgate", error="insufficient_scope", scope="{scopes}""#
                    ),
                    None => r#"Bearer realm="jwtgate", error="insufficient_scope""#.to_owned(),
                };
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert(WWW_AUTHENTICATE, v);
                }
            }
            Reject::BadPath(_)
            | Reject::KeysUnavailable
            | Reject::BadFraming
            | Reject::NoRoute
            | Reject::UpstreamFailed
            | Reject::UpstreamTimeout
            | Reject::Internal => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_of(r: Response<Body>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn every_refusal_has_its_status_and_a_json_body() {
        let cases = [
            (Reject::BadPath(BadPath::EncodedSlash), 400),
            (Reject::BadFraming, 400),
            (Reject::NoRoute, 404),
            (
                Reject::MethodNotAllowed {
                    allow: HeaderValue::from_static("GET"),
                },
                405,
            ),
            (Reject::MissingToken, 401),
            (Reject::InvalidRequest, 400),
            (Reject::InvalidToken(Reason::Expired), 401),
            (Reject::KeysUnavailable, 503),
            (Reject::RateLimited { retry_after: 0 }, 429),
            (
                Reject::Forbidden {
                    missing_scopes: None,
                },
                403,
            ),
            (
                Reject::Forbidden {
                    missing_scopes: Some("a b".into()),
                },
                403,
            ),
            (Reject::UpstreamFailed, 502),
            (Reject::UpstreamTimeout, 504),
            (Reject::Internal, 500),
        ];
        for (reject, status) in cases {
            let r = reject.clone().into_response();
            assert_eq!(r.status().as_u16(), status, "{reject:?}");
            assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
            let body: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
            assert!(body["error"].is_string() && body["error_description"].is_string());
        }
    }

    #[tokio::test]
    async fn missing_token_names_the_realm_and_405_lists_allowed_methods() {
        let r = Reject::MissingToken.into_response();
        assert_eq!(r.headers()[WWW_AUTHENTICATE], r#"Bearer realm="jwtgate""#);
        let r = Reject::MethodNotAllowed {
            allow: HeaderValue::from_static("GET, POST"),
        }
        .into_response();
        assert_eq!(r.headers()[ALLOW], "GET, POST");
    }

    #[tokio::test]
    async fn a_429_says_when_to_retry_in_whole_seconds_at_least_one() {
        for (secs, header) in [(0, "1"), (1, "1"), (42, "42")] {
            let r = Reject::RateLimited { retry_after: secs }.into_response();
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.headers()[RETRY_AFTER], header);
        }
    }

    #[tokio::test]
    async fn forbidden_names_the_missing_scopes_only_when_scopes_are_missing() {
        let r = Reject::Forbidden {
            missing_scopes: None,
        }
        .into_response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="jwtgate", error="insufficient_scope""#
        );
        let r = Reject::Forbidden {
            missing_scopes: Some("orders:read orders:write".into()),
        }
        .into_response();
        assert_eq!(
            r.headers()[WWW_AUTHENTICATE],
            r#"Bearer realm="jwtgate", error="insufficient_scope", scope="orders:read orders:write""#
        );
    }

    #[tokio::test]
    async fn every_token_refusal_says_invalid_token_with_its_fixed_description() {
        for reason in Reason::ALL {
            let r = Reject::InvalidToken(reason).into_response();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
            let www = r.headers()[WWW_AUTHENTICATE].to_str().unwrap().to_owned();
            assert_eq!(
                www,
                format!(
                    r#"Bearer realm="jwtgate", error="invalid_token", error_description="{}""#,
                    reason.description()
                )
            );
            let body: serde_json::Value = serde_json::from_str(&body_of(r).await).unwrap();
            assert_eq!(body["error"], "invalid_token");
            assert_eq!(body["error_description"], reason.description());
        }
    }
}
