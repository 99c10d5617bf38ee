//! Prints events of a recording: `cargo run -p krr-engine --example dump_events FILE FROM COUNT`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut r = krr_engine::trace::RecordingReader::open(&args[1]).expect("open");
    let from: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let count: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(50);
    for (i, e) in r.events_from(from).take(count).enumerate() {
        let e = e.expect("event");
        let mut s = format!("{e:?}");
        s.truncate(200);
        println!("#{:<6} {:>10} {}", from + i as u64, e.icount(), s);
    }
}
