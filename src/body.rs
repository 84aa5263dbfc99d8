//! The one body type that flows through the gateway, both ways.
//!
//! Requests arrive as hyper `Incoming` bodies and responses come back from the upstream the same
//! way; both are boxed into [`Body`] so that refusals (small JSON documents) and streamed bodies
//! share a type. Nothing here buffers: a boxed `Incoming` still streams frame by frame.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body can raise.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request and response body used throughout the gateway.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A body holding `bytes`, sent with an exact `Content-Length`.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`] (e.g. hyper's `Incoming`).
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}
