//! SPEC §3 step 3: authenticate the caller of a protected route.
//!
//! Requires `MatchedRoute`. Token validation does not exist yet, so every protected route
//! **fails closed**: it answers 401 with `WWW-Authenticate: Bearer realm="jwtgate"` and forwards
//! nothing, whatever the request carries. Public routes pass untouched.

use http::{Request, Response};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::body::Body;
use crate::config::Access;
use crate::reject::Reject;
use crate::route::MatchedRoute;

/// The layer: 401 on protected routes, pass on public ones.
pub fn layer() -> ValidateRequestHeaderLayer<Authenticate> {
    ValidateRequestHeaderLayer::custom(Authenticate)
}

/// [`ValidateRequest`] implementation behind [`layer`].
#[derive(Debug, Clone, Copy)]
pub struct Authenticate;

impl<B> ValidateRequest<B> for Authenticate {
    type ResponseBody = Body;

    fn validate(&mut self, req: &mut Request<B>) -> Result<(), Response<Body>> {
        match req.extensions().get::<MatchedRoute>() {
            Some(MatchedRoute(r)) if r.route.access == Access::Public => Ok(()),
            Some(_) => Err(Reject::MissingToken.into_response()),
            None => {
                tracing::error!("auth layer reached without a matched route");
                Err(Reject::Internal.into_response())
            }
        }
    }
}
