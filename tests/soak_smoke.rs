//! The soak tool must never rot: a tiny run completes, samples the server and reports every
//! field. (Only that: a run of seconds cannot judge flatness, so no verdict is asserted.)

use std::process::Command;

#[test]
fn tiny_soak_run_completes_and_reports_every_field() {
    let out = Command::new(env!("CARGO_BIN_EXE_veza-sfu"))
        .args(["soak", "--minutes", "0.3", "--sample-every", "1", "--warmup", "3", "--sessions", "1"])
        .args(["--steady", "2", "--churners", "2", "--churn-every", "1", "--chat-every", "1"])
        .args(["--record-every", "4", "--json"])
        .output()
        .expect("soak runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 0: flat; 3: something grew, which a run this short may well show. Anything else failed.
    assert!(matches!(out.status.code(), Some(0 | 3)), "soak failed ({:?}): {stderr}\n{stdout}", out.status);
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");

    let samples = report["samples"].as_array().expect("samples");
    assert!(samples.len() >= 5, "{report}");
    for field in [
        "t_seconds",
        "rss_bytes",
        "open_fds",
        "threads",
        "alive_tasks",
        "participants",
        "peer_connections",
        "sessions",
        "tracks",
        "generator_participants",
    ] {
        for s in samples {
            assert!(s[field].is_number(), "sample without {field}: {s}");
        }
    }
    // The server was really sampled: a live process has memory, descriptors, threads and tasks.
    let last = samples.last().unwrap();
    for field in ["rss_bytes", "open_fds", "threads", "alive_tasks", "participants"] {
        assert!(last[field].as_u64().unwrap() > 0, "{field} is 0: {last}");
    }

    let activity = &report["activity"];
    for field in [
        "joins",
        "leaves",
        "join_failures",
        "chats",
        "chat_failures",
        "recordings",
        "exports_done",
        "exports_failed",
        "client_errors",
        "errors",
    ] {
        assert!(activity[field].is_u64(), "activity without {field}: {activity}");
    }
    assert!(activity["first_errors"].is_array(), "{activity}");
    assert!(activity["joins"].as_u64().unwrap() > 0, "no churn: {activity}");
    assert!(activity["chats"].as_u64().unwrap() > 0, "no chat: {activity}");
    assert!(activity["recordings"].as_u64().unwrap() > 0, "no recording: {activity}");

    for field in ["bytes", "m_sections", "sending_tracks"] {
        assert!(report["subscriber_sdp"][field].is_u64(), "subscriber_sdp without {field}: {report}");
    }

    let verdicts = report["verdicts"].as_array().expect("verdicts");
    let names: Vec<&str> = verdicts.iter().map(|v| v["resource"].as_str().unwrap()).collect();
    assert_eq!(names, ["rss", "open_fds", "threads", "alive_tasks"]);
    for v in verdicts {
        for field in [
            "first_fifth_mean",
            "last_fifth_mean",
            "participants_first_fifth",
            "participants_last_fifth",
            "per_participant",
            "load_adjusted_rise",
            "slope_per_hour",
            "threshold",
            "slope_threshold_per_hour",
        ] {
            assert!(v[field].is_number(), "verdict without {field}: {v}");
        }
        assert!(["flat", "growing", "too_short"].contains(&v["outcome"].as_str().unwrap()), "{v}");
    }
}
