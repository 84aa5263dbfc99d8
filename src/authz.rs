//! SPEC §3 step 4: authorise the verified caller for the route (403).
//!
//! Requires the `RequestContext` with its route and, on protected routes, the identity `auth`
//! set.
//! A route's `groups` need at least one match and its `scopes` all of theirs; comparison is
//! exact and case-sensitive (OKTA.md §1.6: group names are admin-chosen strings). A protected
//! request that arrives without an identity is refused: the layer fails closed.

use http::{Request, Response};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::auth::validate::Identity;
use crate::body::Body;
use crate::config::Access;
use crate::reject::Reject;
use crate::snapshot::RequestContext;

/// Whether `identity` may call a route with `access`.
///
/// # Errors
///
/// [`Reject::Forbidden`], naming the missing scopes when scopes are what is missing.
pub fn check(access: &Access, identity: &Identity) -> Result<(), Reject> {
    let Access::Protected { groups, scopes } = access else {
        return Ok(());
    };
    if let Some(groups) = groups
        && !identity.groups.iter().any(|g| groups.contains(g))
    {
        return Err(Reject::Forbidden {
            missing_scopes: None,
        });
    }
    let missing: Vec<&str> = scopes
        .iter()
        .filter(|s| !identity.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if !missing.is_empty() {
        return Err(Reject::Forbidden {
            missing_scopes: Some(missing.join(" ")),
        });
    }
    Ok(())
}

/// The layer: 403 unless the caller is allowed.
pub fn layer() -> ValidateRequestHeaderLayer<Authorize> {
    ValidateRequestHeaderLayer::custom(Authorize)
}

/// [`ValidateRequest`] implementation behind [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct Authorize;

impl<B> ValidateRequest<B> for Authorize {
    type ResponseBody = Body;

    fn validate(&mut self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        let Some((context, route)) = RequestContext::routed(req) else {
            tracing::error!("authz layer reached without a matched route");
            return Err(Reject::Internal.into_response());
        };
        if route.route.access == Access::Public {
            return Ok(());
        }
        let Some(identity) = context.identity() else {
            tracing::error!("authz layer reached without an identity on a protected route");
            return Err(Reject::Internal.into_response());
        };
        check(&route.route.access, identity).map_err(Reject::into_response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn identity(groups: &[&str], scopes: &[&str]) -> Identity {
        Identity {
            sub: "s".into(),
            uid: None,
            cid: None,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            exp: 0,
            claims: BTreeMap::new(),
        }
    }

    fn protected(groups: Option<&[&str]>, scopes: &[&str]) -> Access {
        Access::Protected {
            groups: groups.map(|g| g.iter().map(|x| (*x).to_owned()).collect()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn groups_need_one_match_and_scopes_need_all() {
        let forbidden = Err(Reject::Forbidden {
            missing_scopes: None,
        });
        let missing = |s: &str| {
            Err(Reject::Forbidden {
                missing_scopes: Some(s.to_owned()),
            })
        };
        let table = [
            (Access::Public, identity(&[], &[]), Ok(())),
            (protected(None, &[]), identity(&[], &[]), Ok(())),
            (
                protected(Some(&["a", "b"]), &[]),
                identity(&["b"], &[]),
                Ok(()),
            ),
            (
                protected(Some(&["a", "b"]), &[]),
                identity(&["c"], &[]),
                forbidden.clone(),
            ),
            (
                protected(Some(&["a"]), &[]),
                identity(&[], &[]),
                forbidden.clone(),
            ),
            // Exact, case-sensitive: no folding, no prefixes.
            (
                protected(Some(&["Admins"]), &[]),
                identity(&["admins"], &[]),
                forbidden.clone(),
            ),
            (
                protected(Some(&["admin"]), &[]),
                identity(&["admins"], &[]),
                forbidden.clone(),
            ),
            (
                protected(None, &["r", "w"]),
                identity(&[], &["w", "r", "x"]),
                Ok(()),
            ),
            (
                protected(None, &["r", "w"]),
                identity(&[], &["r"]),
                missing("w"),
            ),
            (
                protected(None, &["r", "w"]),
                identity(&[], &[]),
                missing("r w"),
            ),
            // Groups are judged first.
            (
                protected(Some(&["a"]), &["r"]),
                identity(&["z"], &[]),
                forbidden,
            ),
            (
                protected(Some(&["a"]), &["r"]),
                identity(&["a"], &[]),
                missing("r"),
            ),
            (
                protected(Some(&["a"]), &["r"]),
                identity(&["a"], &["r"]),
                Ok(()),
            ),
        ];
        for (access, who, want) in table {
            assert_eq!(check(&access, &who), want, "{access:?} {who:?}");
        }
    }
}
