//! `hangar ops` and `hangar events`: the operation journal and the event stream.

use std::io::Write;
use std::time::Duration;

use hangar_api::EventView;

use crate::table::print_listing;
use crate::{Failure, Output};

use crate::common::*;

/// `hangar ops`: the operation journal, newest first.
pub fn ops(limit: usize, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let list = control()?.operations(limit).map_err(from_body)?;
    let columns = ("ID<24 KIND<16 TARGET<20 STATUS<11 STARTED>9", "ERROR");
    print_listing(out, output, &list, columns, |op| {
        let cells = vec![
            op.id.to_string(),
            op.kind.to_string(),
            op.target.to_string(),
            op.status.to_string(),
            fmt_time(op.created_at),
        ];
        (cells, op.error.as_ref().map(|e| e.code.to_string()).unwrap_or_default())
    })
}

/// `hangar ops show ID`: one operation as JSON.
pub fn op_show(id: &str, out: &mut dyn Write) -> Result<(), Failure> {
    let op = control()?.operation(id).map_err(from_body)?;
    print_json(out, &op)
}

/// One event as `hangar events` prints it.
pub(crate) fn event_line(e: &EventView) -> String {
    match e {
        EventView::Transition { seq, vm, from, to, at, cause, operation } => format!(
            "{seq:>6}  {}  {vm:<20} {:>9} -> {to:<9} ({cause}){}",
            fmt_time(*at),
            from.as_deref().unwrap_or("(new)"),
            operation.as_ref().map(|o| format!(" {o}")).unwrap_or_default()
        ),
        EventView::Engine { seq, vm, at, message } => {
            format!("{seq:>6}  {}  {vm:<20} engine: {message}", fmt_time(*at))
        }
    }
}

/// `hangar events --cluster`: every live node's events, merged by time, each line led by its
/// node (through hangard, which asks the other nodes).
pub fn cluster_events(follow: bool, output: Output, out: &mut dyn Write) -> Result<(), Failure> {
    let mut cursor = String::new();
    loop {
        let page: hangar_api::ClusterEvents =
            crate::fleet::call("GET", &format!("/v1/cluster/events?cursor={cursor}"), None)?;
        for e in &page.events {
            let line = if output == Output::Json {
                serde_json::to_string(e).expect("json")
            } else {
                format!("{:<12} {}", e.node, event_line(&e.event))
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        for node in &page.unanswered {
            eprintln!("hangar: node {node} did not answer; its events follow when it does");
        }
        cursor = page.cursor;
        if page.events.is_empty() {
            if !follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Prints the event stream (from the daemon when it runs, else from the store: the same
/// stream either way).
pub fn events(
    since: u64, follow: bool, output: Output, out: &mut dyn Write,
) -> Result<(), Failure> {
    let control = control()?;
    let mut after = since;
    loop {
        let page = control.events_since(after, 256).map_err(from_body)?;
        for e in &page {
            after = e.seq();
            let line = if output == Output::Json {
                serde_json::to_string(e).expect("json")
            } else {
                event_line(e)
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if page.is_empty() {
            if !follow {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
