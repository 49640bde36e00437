//! The load generator must never rot: a tiny run completes and delivers every packet, with the
//! full webrtc-rs clients and with the lean ones. (Only that: performance figures come from
//! real runs, never from assertions in tests.)

use std::process::Command;

fn tiny_run(extra: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_veza-sfu"))
        .args(["bench", "--publishers", "2", "--subscribers", "1", "--rate", "50", "--seconds", "2"])
        .args(["--warmup", "1", "--json"])
        .args(extra)
        .output()
        .expect("bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["delivery_ratio"], 1.0, "{report}");
    assert!(report["forwarded_packets"].as_u64().unwrap() > 0, "{report}");
    assert!(report["cpu_us_per_forwarded_packet"].as_f64().unwrap() > 0.0, "{report}");
    report
}

#[test]
fn tiny_bench_run_completes_with_full_delivery() {
    tiny_run(&["--no-pin"]);
}

/// Pinned, as the real runs are: the bench checks that the server really runs on its own CPU
/// (until the fourth session it silently shared the generator's) and says so in the report.
#[test]
fn tiny_lean_bench_run_completes_with_full_delivery_on_separate_cpus() {
    let report = tiny_run(&["--lean"]);
    // The bench takes the first two CPUs it may use (and fails if the server is not on its own).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (server, generator) = (&report["placement"]["server_cpu"], &report["placement"]["generator_cpu"]);
    if cpus >= 2 {
        assert!(server.is_u64() && generator.is_u64() && server != generator, "{report}");
    } else {
        assert!(server.is_null() && generator.is_null(), "{report}");
    }
}
