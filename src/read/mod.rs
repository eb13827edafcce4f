//! Reading the queue: postcat's and postqueue's views.

pub mod cat;
pub mod list;
