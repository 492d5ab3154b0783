// The web client is built by `npm --prefix web run build` into web/dist and embedded in the
// binary. If it has not been built, embed nothing: the server then answers pages with a clear
// "web client not built" error instead of failing to compile the API.
fn main() {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist");
    if !dist.exists() {
        let _ = std::fs::create_dir_all(&dist);
    }
    println!("cargo:rerun-if-changed=../../web/dist");
}
