//! The human-readable summary of `hangar-bench all`.

use std::fmt::Write;

use serde_json::Value;

fn ms(v: &Value) -> String {
    v.as_f64().map(|x| format!("{x:.1} ms")).unwrap_or_else(|| "-".into())
}

fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) => format!("{x}"),
        None => "-".into(),
    }
}

/// One line per figure: what, Hangar, baseline, ratio, target.
pub fn render(r: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n{:<42} {:>12} {:>12} {:>8} {:>8}",
        "figure", "hangar", "baseline", "ratio", "target"
    );
    let row = |out: &mut String, what: &str, a: String, b: String, ratio: String, target: &str| {
        let _ = writeln!(out, "{what:<42} {a:>12} {b:>12} {ratio:>8} {target:>8}");
    };
    let err = |out: &mut String, what: &str, v: &Value| {
        if let Some(e) = v["error"].as_str() {
            let _ = writeln!(out, "{what:<42} error: {e}");
            true
        } else {
            false
        }
    };
    let b = &r["cold_boot"];
    if !err(&mut out, "cold boot (up vs raw argv)", b) {
        row(
            &mut out,
            "cold boot (up vs raw argv)",
            ms(&b["hangar_up"]["median_ms"]),
            ms(&b["raw_qemu"]["median_ms"]),
            num(&b["ratio"]),
            "<= 1.02",
        );
    }
    let b = &r["run_rm"];
    if !err(&mut out, "run --rm -- true (vs raw argv to exit)", b) {
        row(
            &mut out,
            "run --rm -- true (vs raw argv to exit)",
            ms(&b["hangar_run_rm"]["median_ms"]),
            ms(&b["raw_qemu"]["median_ms"]),
            num(&b["ratio"]),
            "<= 1.02",
        );
    }
    let s = &r["restore"];
    if !err(&mut out, "restore (vs raw -incoming)", s) {
        let m = &s["medians_ms"];
        row(
            &mut out,
            "restore, mapped (vs raw mapped)",
            ms(&m["mapped"]["median_ms"]),
            ms(&m["raw_mapped"]["median_ms"]),
            num(&s["mapped_ratio_vs_raw"]),
            "",
        );
        row(
            &mut out,
            "restore, mapped (vs QEMU floor)",
            ms(&m["mapped"]["median_ms"]),
            ms(&m["floor"]["median_ms"]),
            num(&s["mapped_ratio_vs_floor"]),
            "<= 1.3",
        );
        row(
            &mut out,
            "restore, stream (vs raw stream)",
            ms(&m["stream"]["median_ms"]),
            ms(&m["raw_stream"]["median_ms"]),
            num(&s["stream_ratio_vs_raw"]),
            "<= 1.05",
        );
        row(
            &mut out,
            "save --sleep, mapped (vs stream)",
            ms(&m["save_mapped"]["median_ms"]),
            ms(&m["save_stream"]["median_ms"]),
            num(&s["save_stream_vs_mapped"]),
            "<= 20 ms",
        );
        row(
            &mut out,
            "API: save --sleep / wake, mapped",
            ms(&m["api_save_mapped"]["median_ms"]),
            ms(&m["api_wake_mapped"]["median_ms"]),
            "".into(),
            "<= 20 / 45",
        );
        row(
            &mut out,
            "restore vs cold boot (speedup)",
            ms(&m["mapped"]["median_ms"]),
            ms(&s["hangar_cold_boot"]["median_ms"]),
            format!("{}x", num(&s["speedup_vs_cold_boot"])),
            ">= 5x",
        );
    }
    let p = &r["memory"];
    if !err(&mut out, "PSS: 10 clones vs 10 cold boots", p) {
        let mib =
            |v: &Value| v.as_f64().map(|x| format!("{x:.0} MiB")).unwrap_or_else(|| "-".into());
        row(
            &mut out,
            "PSS: 10 clones vs 10 cold boots",
            mib(&p["clones_pss_mib"]),
            mib(&p["cold_pss_mib"]),
            num(&p["ratio"]),
            "<= 0.4",
        );
    }
    let c = &r["confinement"];
    if !err(&mut out, "confined vs HANGAR_CONFINE=off", c) {
        row(
            &mut out,
            "cold boot: confined vs HANGAR_CONFINE=off",
            ms(&c["cold_boot"]["confined"]["median_ms"]),
            ms(&c["cold_boot"]["unconfined"]["median_ms"]),
            num(&c["cold_boot"]["ratio"]),
            "<= 1.03",
        );
        row(
            &mut out,
            "clone: confined vs HANGAR_CONFINE=off",
            ms(&c["clone"]["confined"]["median_ms"]),
            ms(&c["clone"]["unconfined"]["median_ms"]),
            num(&c["clone"]["ratio"]),
            "<= 1.03",
        );
    }
    let w = &r["fleet"];
    if !err(&mut out, "fleet: warm claim via API p50 (p99 in baseline column)", w) {
        row(
            &mut out,
            "fleet: warm claim via API p50 (p99 in baseline column)",
            ms(&w["warm_claim"]["p50_ms"]),
            ms(&w["warm_claim"]["p99_ms"]),
            "-".into(),
            "<= 10 ms",
        );
        row(
            &mut out,
            "fleet: spare claim via API p50 vs warm claim p50",
            ms(&w["spare_claim"]["p50_ms"]),
            ms(&w["warm_claim"]["p50_ms"]),
            ratio(&w["spare_claim"]["p50_ms"], &w["warm_claim"]["p50_ms"]),
            "<= 10 ms",
        );
        row(
            &mut out,
            "fleet: a spare's PSS (MiB) vs the same instance claimed",
            num(&w["spare_claim"]["spare_pss_median_mib"]),
            num(&w["spare_claim"]["claimed_clone_pss_median_mib"]),
            ratio(
                &w["spare_claim"]["spare_pss_median_mib"],
                &w["spare_claim"]["claimed_clone_pss_median_mib"],
            ),
            "<= 40 MiB",
        );
        row(
            &mut out,
            "fleet: clone claim vs QEMU's floor (same argv, -S)",
            ms(&w["create_claim"]["cloned_median_ms"]),
            ms(&w["create_claim"]["floor_median_ms"]),
            num(&w["create_claim"]["cloned_ratio_vs_floor"]),
            "<= 1.3",
        );
        row(
            &mut out,
            "fleet: clone vs cold boot of the same template",
            ms(&w["create_claim"]["cloned_median_ms"]),
            ms(&w["create_claim"]["cold_boot_median_ms"]),
            format!("{}x", num(&w["create_claim"]["clone_speedup_vs_cold_boot"])),
            ">= 5x",
        );
        row(
            &mut out,
            "fleet: claim from sleep vs cold boot",
            ms(&w["wake_claim"]["median_ms"]),
            ms(&w["create_claim"]["cold_boot_median_ms"]),
            format!("{}x", num(&w["wake_speedup_vs_cold_boot"])),
            "-",
        );
    }
    let p = &r["resume_via_api"];
    if !err(&mut out, "API resume p50 (p99 in baseline column)", p) {
        row(
            &mut out,
            "API resume p50 (p99 in baseline column)",
            ms(&p["p50_ms"]),
            ms(&p["p99_ms"]),
            "-".into(),
            "-",
        );
    }
    let x = &r["exec"];
    if !err(&mut out, "exec: hangar exec -- true p50 (p99 in baseline column)", x) {
        row(
            &mut out,
            "exec: hangar exec -- true p50 (p99 in baseline column)",
            ms(&x["cli_exec_true"]["p50_ms"]),
            ms(&x["cli_exec_true"]["p99_ms"]),
            "-".into(),
            "<= 40 ms",
        );
        row(
            &mut out,
            "exec: agent client library, true p50 (p99)",
            ms(&x["library_exec_true"]["p50_ms"]),
            ms(&x["library_exec_true"]["p99_ms"]),
            "-".into(),
            "-",
        );
        row(
            &mut out,
            "exec: through the API alone (WebSocket), true p50 (p99)",
            ms(&x["api_exec_true"]["p50_ms"]),
            ms(&x["api_exec_true"]["p99_ms"]),
            "-".into(),
            "<= 15 ms",
        );
        row(
            &mut out,
            "exec: hangar exec through hangard, true p50 (p99)",
            ms(&x["cli_via_daemon_exec_true"]["p50_ms"]),
            ms(&x["cli_via_daemon_exec_true"]["p99_ms"]),
            "-".into(),
            "<= 40 ms",
        );
        row(
            &mut out,
            "exec vs hangar run -- true (speedup)",
            ms(&x["cli_exec_true"]["p50_ms"]),
            ms(&x["cold_run_true"]["p50_ms"]),
            format!("{}x", num(&x["cli_speedup_vs_cold_run"])),
            "-",
        );
        row(
            &mut out,
            "exec: guest stdout MiB/s, head (dd bs=32K in baseline column)",
            num(&x["stdout_mib_s"]["head_64_mib"]),
            num(&x["stdout_mib_s"]["dd_bs32k_64_mib"]),
            "-".into(),
            ">= 50 MiB/s",
        );
        row(
            &mut out,
            "cp 64 MiB, MiB/s into the guest (out of it in baseline column)",
            num(&x["copy_mib_s"]["into_guest_64_mib"]),
            num(&x["copy_mib_s"]["out_of_guest_64_mib"]),
            "-".into(),
            "-",
        );
    }
    let t = &r["throughput"];
    if !err(&mut out, "throughput", t) {
        for run in t["runs"].as_array().into_iter().flatten() {
            row(
                &mut out,
                &format!("{} guests at once, all ready", num(&run["guests"])),
                ms(&run["hangar_all_ready"]["median_ms"]),
                ms(&run["raw_all_ready"]["median_ms"]),
                num(&run["ratio"]),
                "-",
            );
        }
    }
    let f = &r["footprint"];
    if !err(&mut out, "footprint", f) {
        for v in f["hangard_rss_mib"].as_array().into_iter().flatten() {
            row(
                &mut out,
                &format!("hangard RSS, {} VMs", num(&v["vms"])),
                format!("{} MiB", num(&v["rss_mib"])),
                "-".into(),
                "-".into(),
                "-",
            );
        }
        row(
            &mut out,
            "runtime dir of a running guest",
            format!("{} B", num(&f["running_guest"]["runtime_dir_bytes"])),
            "-".into(),
            "-".into(),
            "-",
        );
    }
    let a = &r["api"];
    if !err(&mut out, "GET /v1/vms x1000 at once", a) {
        row(
            &mut out,
            "GET /v1/vms x1000 at once, p99",
            ms(&a["get_vms"]["p99_ms"]),
            ms(&a["baseline_health"]["p99_ms"]),
            num(&a["p99_ratio_vs_baseline"]),
            "5 ms",
        );
    }
    for (k, v) in r["control_plane"].as_object().into_iter().flatten() {
        let ns = v["median_ns"].as_f64().unwrap_or(f64::NAN);
        row(
            &mut out,
            &format!("criterion: {k}"),
            format!("{:.1} us", ns / 1000.0),
            "-".into(),
            "-".into(),
            "-",
        );
    }
    out
}

/// `a / b` to two decimals, or `-` when either is missing.
fn ratio(a: &Value, b: &Value) -> String {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_rows_show_spares_against_their_baselines() {
        let results = serde_json::json!({"fleet": {
            "warm_claim": {"p50_ms": 8.0, "p99_ms": 20.0},
            "spare_claim": {"p50_ms": 10.0, "spare_pss_median_mib": 37.8,
                            "claimed_clone_pss_median_mib": 75.6},
            "create_claim": {"cloned_median_ms": 69.0, "floor_median_ms": 60.0,
                             "cloned_ratio_vs_floor": 1.15, "cold_boot_median_ms": 4600.0,
                             "clone_speedup_vs_cold_boot": 66.7},
            "wake_claim": {"median_ms": 70.0}, "wake_speedup_vs_cold_boot": 65.7,
        }});
        let table = render(&results);
        let line = |start: &str| {
            table
                .lines()
                .find(|l| l.contains(start))
                .unwrap_or_else(|| panic!("{table}"))
                .to_string()
        };
        assert!(line("spare claim").contains("1.25"), "{}", line("spare claim"));
        assert!(line("a spare's PSS").contains("0.50"), "{}", line("a spare's PSS"));
        assert!(line("clone claim vs QEMU's floor").contains("1.15"));
    }
}
