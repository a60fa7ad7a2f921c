// tch sets no RPATH: bake the libtorch directory that torch-sys linked against into our binaries,
// so `target/release/eio` runs without LD_LIBRARY_PATH. Also records the git revision.
fn main() {
    if let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        // Nothing in eio calls into libtorch_cuda directly, so `--as-needed` drops it and CUDA
        // then never registers: `Cuda::is_available()` is false even on a GPU machine. Keep it
        // when this libtorch has it (a CPU-only libtorch has none, and needs none).
        for lib in ["torch_cuda", "c10_cuda"] {
            if std::path::Path::new(&dir).join(format!("lib{lib}.so")).exists() {
                println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-l{lib},--as-needed");
            }
        }
    }
    let rev = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty", "--abbrev=12"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=EIO_GIT_REV={rev}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
