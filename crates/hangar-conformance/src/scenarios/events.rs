//! `Events`: the stream has no gaps and positions resume it.

use hangar_core::contracts::*;

use crate::Ctx;

use super::*;

pub(super) fn e01_events_without_gaps(ctx: &Ctx<'_>) -> Check {
    let rec = recorder(ctx);
    let start = {
        // Position the cursor at the current end so only this scenario's events count.
        let mut cursor = EventCursor::after(0);
        while !ok(cursor.next_page(ctx.engine, 1000), "drain")?.events.is_empty() {}
        cursor.position()
    };
    let vm = running(ctx, "conf-e01")?;
    teardown(ctx, &vm)?;
    let mut cursor = EventCursor::after(start);
    let mut seen = Vec::new();
    let mut expected_seq = start + 1;
    loop {
        let page = ok(cursor.next_page(ctx.engine, 2), "events")?;
        if let Some(gap) = page.gap {
            return Err(format!("unexpected gap {gap:?} reading fresh events"));
        }
        if page.events.is_empty() {
            break;
        }
        for e in page.events {
            ensure!(e.seq == expected_seq, "seq {} where {expected_seq} was due", e.seq);
            expected_seq += 1;
            if let EventKind::Transition(t) = e.kind {
                seen.push(t);
            }
        }
    }
    let observed = rec.0.lock().unwrap().clone();
    ensure!(seen == observed, "stream transitions {seen:?} differ from observed {observed:?}");
    ensure!(!seen.is_empty(), "no transition events");
    Ok(())
}

pub(super) fn e02_event_positions(ctx: &Ctx<'_>) -> Check {
    let vm = running(ctx, "conf-e02")?;
    let mut cursor = EventCursor::after(0);
    loop {
        let page = ok(cursor.next_page(ctx.engine, 1000), "events")?;
        if let (Some(gap), Some(first)) = (page.gap, page.events.first()) {
            ensure!(gap.from <= gap.to && first.seq == gap.to + 1, "inconsistent gap {gap:?}");
        }
        if page.events.is_empty() {
            break;
        }
    }
    let end = cursor.position();
    ensure!(end > 0, "no events after a start");
    let beyond = ok(ctx.engine.events_since(end + 100, 10), "read beyond the end")?;
    ensure!(beyond.events.is_empty() && beyond.gap.is_none(), "read beyond end gave {beyond:?}");
    let at_end = ok(ctx.engine.events_since(end, 10), "read at the end")?;
    ensure!(at_end.events.is_empty(), "read at end gave {:?}", at_end.events);
    teardown(ctx, &vm)
}
