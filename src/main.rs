fn main() {
    eprintln!("sipshard: server not built yet");
    std::process::exit(2);
}
