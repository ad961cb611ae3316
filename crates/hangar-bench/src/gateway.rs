//! The gateway (issue 17): time to the first byte of an HTTP answer through hangard's gateway
//! when the pool's instance is running, paused (warm) and sleeping, against a direct
//! connection to the same guest in the same rounds; and requests per second through the
//! gateway against direct. Inside a network namespace made for the run: the daemon, its QEMUs,
//! its bridge and this process's clients live there.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::engine::{Args, Home};
use crate::stats::{median, round};

/// Milliseconds from connect to the first byte of the answer to one GET; checks it is a 200.
fn first_byte(address: &str, host: &str) -> Result<f64, String> {
    let t = Instant::now();
    let mut conn = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(60))).map_err(|e| e.to_string())?;
    write!(conn, "GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    conn.read_exact(&mut first).map_err(|e| format!("{address}: {e}"))?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    let head = String::from_utf8_lossy(&rest);
    if !head.contains(" 200 ") {
        return Err(format!("{address}: not a 200: {}{head}", first[0] as char));
    }
    Ok(ms)
}

fn call(
    socket: &std::path::Path, method: &str, path: &str, body: Option<Value>,
) -> Result<Value, String> {
    let body = body.map(|b| b.to_string());
    let (status, answer) =
        crate::api::call(socket, method, path, body.as_deref().map(str::as_bytes))?;
    let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
    if status >= 300 {
        return Err(format!("{method} {path}: {status} {v}"));
    }
    Ok(v)
}

/// The instance the gateway holds: its VM name.
fn held(socket: &std::path::Path) -> Result<String, String> {
    let instances = call(socket, "GET", "/v1/instances?pool=acme--web", None)?;
    instances
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["holder"] == "gateway" && i["state"] == "running")
        .and_then(|i| i["name"].as_str().map(String::from))
        .ok_or_else(|| format!("no running instance held by the gateway: {instances}"))
}

fn measure(args: &Args) -> Result<Value, String> {
    let home = Home::new(args, "gw")?;
    let (_daemon, socket) = crate::engine::daemon(args, &home, &[])?;
    call(&socket, "PUT", "/v1/tenants/acme", Some(json!({})))?;
    let script = "mkdir -p /www && echo page > /www/index.html && busybox httpd -p 80 -h /www && exec sleep 1000000";
    let template = json!({
        "schema_version": 1, "name": "t", "machine": {"memory_mib": 256},
        "boot": {"image": "minimal", "cmdline": hangar_testkit::run_argument(&["/bin/sh", "-c", script])},
        "nic": [{"name": "net0", "mode": "bridge"}],
    });
    call(
        &socket,
        "POST",
        "/v1/pools",
        Some(json!({"id": "web", "tenant": "acme", "spec": template, "desired": {"sleeping": 1}})),
    )?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while call(&socket, "GET", "/v1/pools/acme--web", None)?["counts"]["sleeping"] != 1 {
        call(&socket, "POST", "/v1/fleet/reconcile", None)?;
        if Instant::now() > deadline {
            return Err("the pool never had its sleeping instance".into());
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| e.to_string())?
        .local_addr()
        .map_err(|e| e.to_string())?
        .port();
    call(
        &socket,
        "POST",
        "/v1/routes",
        Some(
            json!({"id": "shop", "tenant": "acme", "port": port, "pool": "web", "guest_port": 80, "match": {"protocol": "http", "host": "shop.test"}}),
        ),
    )?;
    let gateway = format!("127.0.0.1:{port}");
    // The first request wakes the pool's sleeping instance (untimed warm-up).
    first_byte(&gateway, "shop.test")?;
    let vm = held(&socket)?;
    let view = call(&socket, "GET", &format!("/v1/vms/{vm}"), None)?;
    let address = view["addresses"][0]
        .as_str()
        .and_then(|a| a.split('/').next())
        .ok_or_else(|| format!("{vm} has no address: {view}"))?
        .to_string();
    let direct = format!("{address}:80");

    let (mut running, mut raw, mut warm, mut sleeping) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for _ in 0..10 {
            if round % 2 == 0 {
                running.push(first_byte(&gateway, "shop.test")?);
                raw.push(first_byte(&direct, "shop.test")?);
            } else {
                raw.push(first_byte(&direct, "shop.test")?);
                running.push(first_byte(&gateway, "shop.test")?);
            }
        }
        // Warm: paused, and the fleet has seen it (as after its idle policy paused it).
        call(&socket, "POST", &format!("/v1/vms/{vm}/pause?wait=true"), Some(json!({})))?;
        call(&socket, "POST", "/v1/fleet/reconcile", None)?;
        warm.push(first_byte(&gateway, "shop.test")?);
        // Sleeping: saved to its sleep snapshot (as the idle policy does), then woken by the
        // request.
        call(
            &socket,
            "POST",
            &format!("/v1/vms/{vm}/snapshots?wait=true"),
            Some(json!({"id": format!("{vm}-sleep"), "sleep": true})),
        )?;
        call(&socket, "POST", "/v1/fleet/reconcile", None)?;
        sleeping.push(first_byte(&gateway, "shop.test")?);
    }
    // Requests per second, one connection per request, one after the other, alternated.
    let rate = |address: &str| -> Result<f64, String> {
        let t = Instant::now();
        for _ in 0..200 {
            first_byte(address, "shop.test")?;
        }
        Ok(200.0 / t.elapsed().as_secs_f64())
    };
    let (mut rps_gateway, mut rps_direct) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        rps_direct.push(rate(&direct)?);
        rps_gateway.push(rate(&gateway)?);
    }
    let (m_running, m_raw) = (median(&running), median(&raw));
    let (m_warm, m_sleeping) = (median(&warm), median(&sleeping));
    let (g, d) = (median(&rps_gateway), median(&rps_direct));
    Ok(json!({
        "benchmark": "gateway",
        "first_byte_ms": {
            "direct_running": round(m_raw, 2),
            "gateway_running": round(m_running, 2),
            "gateway_warm": round(m_warm, 2),
            "gateway_sleeping": round(m_sleeping, 2),
            "samples": {"running": running.len(), "warm": warm.len(), "sleeping": sleeping.len()},
        },
        "running_ratio_vs_direct": round(m_running / m_raw, 3),
        "warm_added_ms": round(m_warm - m_raw, 2),
        "sleeping_added_ms": round(m_sleeping - m_raw, 2),
        "requests_per_s": {"gateway": round(g, 0), "direct": round(d, 0), "ratio": round(g / d, 3)},
        "targets": "running <= 1.1x direct; warm <= +20 ms; sleeping <= +250 ms",
    }))
}

/// Runs [`measure`] in a network namespace of its own.
pub fn run(args: &Args) -> Result<Value, String> {
    let ns = hangar_testkit::netns::Netns::new()?;
    let args = args.clone();
    ns.run(move || measure(&args))
}
