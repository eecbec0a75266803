//! Storage locations (the object_store backends build on these).

mod uri;

pub use uri::{Scheme, StorageUri};
