//! The one integration-test harness (one binary keeps libtorch link time down).

mod attack;
mod foundation;
mod util;
