// tch sets no RPATH: bake the libtorch directory that torch-sys linked against into our binaries,
// so `target/release/eio` runs without LD_LIBRARY_PATH.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    }
}
