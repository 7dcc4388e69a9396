//! medbert: fine-tune BERT-family models on MedMCQA with libtorch (tch and a BERT graph of our own), on one
//! process or many, with gradients synchronised through PyTorch's own c10d.

pub mod atomic;
pub mod batch;
pub mod data;
pub mod device;
pub mod dist;
pub mod doctor;
pub mod encode;
pub mod error;
pub mod eval;
pub mod fetch;
pub mod files;
pub mod hub;
pub mod infer;
pub mod launch;
pub mod model;
pub mod prep;
pub mod progress;
pub mod settings;
pub mod sys;
pub mod tensorboard;
pub mod train;

pub use error::{Error, Result};
