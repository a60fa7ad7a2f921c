//! The one integration-test harness (one binary keeps libtorch link time down).

mod attack;
mod eio_train;
mod foundation;
mod golden;
mod interop;
mod methods;
mod reliability;
mod report;
mod reproduce;
mod util;
