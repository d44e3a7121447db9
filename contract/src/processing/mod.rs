//! Declared pre- and post-processing, one module per kind: how a text or an
//! image input becomes tensors, and how an output tensor is reduced before it
//! is returned.
//!
//! Each kind's module holds three things, so that registration, router and
//! node always agree:
//! - the definition's spelling (strict, like the rest of the format);
//! - the checks made at registration, with and without the model;
//! - the cheap checks the router makes on each request: strings present,
//!   sizes capped, base64 decodable. It never tokenizes or decodes an image;
//!   the node does that work (`runtime/src/prepost/`).
//!
//! A new input kind is one module here, one in `runtime/src/prepost/`, and one
//! variant of [`crate::definition::InputKind`].

mod common;
pub mod image;
pub mod post;
pub mod text;

pub use common::ItemLimits;
pub use image::{ImageDecode, ImageSpec, Layout};
pub use post::Post;
pub use text::{Padding, TextSpec, TextTensors};
