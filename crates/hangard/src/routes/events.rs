//! `/v1/events`: the event stream (SSE) and its pages, each caller seeing only its own.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Query;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use hangar_api::EventView;
use hangar_control::Control;
use serde::Deserialize;

use crate::error::*;
use crate::middleware::Ctx;
use hangar_api::ErrorBody;

/// `GET /v1/events` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Replay from after this sequence number (0: from the beginning of the store's history).
    #[serde(default)]
    pub since: u64,
    /// Keep the stream open for new events (default true); false ends it once caught up.
    pub follow: Option<bool>,
}

/// `GET /v1/events`: Server-Sent Events: `event: transition` for every lifecycle transition
/// (from, to, cause, operation) and `event: engine` for what the engine observed that is not a
/// state change (a stop escalated, a QEMU adopted after a crash); `id:` is the sequence number,
/// `data:` an EventView. Replays from the store first, so `since=N` after a disconnect misses
/// nothing.
#[utoipa::path(get, path = "/v1/events", params(EventsQuery),
    responses((status = 200, content_type = "text/event-stream", body = EventView, description = "A stream of events")))]
pub(crate) async fn events(
    Ctx { d, caller }: Ctx, Query(q): Query<EventsQuery>,
) -> Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>> {
    let follow = q.follow.unwrap_or(true);
    let state = (q.since, VecDeque::new(), d.clone());
    let caller = Arc::new(caller);
    let stream = futures_util::stream::unfold(state, move |(mut after, mut queue, d)| {
        let caller = caller.clone();
        async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((Ok(event), (after, queue, d)));
                }
                // Subscribe before reading, so a transition between the read and the wait wakes us.
                let changed = d.changed.clone();
                let woken = changed.notified();
                let local = d.local.clone();
                let page = blocking(move || local.events_since(after, 256))
                    .await
                    .and_then(|r| r.map_err(ApiError::from));
                match page {
                    Ok(page) if !page.is_empty() => {
                        for e in page {
                            after = e.seq();
                            if !caller.sees(event_owner(&e)) {
                                continue;
                            }
                            let kind = match e {
                                EventView::Transition { .. } => "transition",
                                EventView::Engine { .. } => "engine",
                            };
                            queue.push_back(
                                SseEvent::default()
                                    .id(after.to_string())
                                    .event(kind)
                                    .data(serde_json::to_string(&e).expect("events serialise")),
                            );
                        }
                    }
                    _ if !follow => return None,
                    _ => {
                        // Also wake periodically: transitions made by another process (a CLI with
                        // HANGAR_DAEMON=never) reach the store without notifying us.
                        let _ = tokio::time::timeout(Duration::from_millis(500), woken).await;
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// `GET /v1/events/page` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventPageQuery {
    /// Events after this sequence number.
    #[serde(default)]
    pub since: u64,
    /// At most this many (default 256, at most 10000).
    pub limit: Option<usize>,
}

/// `GET /v1/events/page`: the same events as JSON, one page at a time (what `hangar events`
/// reads).
#[utoipa::path(get, path = "/v1/events/page", params(EventPageQuery),
    responses((status = 200, body = [EventView])))]
pub(crate) async fn events_page(
    Ctx { d, caller }: Ctx, Query(q): Query<EventPageQuery>,
) -> ApiResult<Json<Vec<EventView>>> {
    Ok(Json(page(&d, caller, q.since, q.limit).await?))
}

/// Up to `limit` (default 256, at most 10000) of this node's events after `since` that `caller`
/// may see.
pub(crate) async fn page(
    d: &crate::state::Daemon, caller: crate::auth::Caller, since: u64, limit: Option<usize>,
) -> ApiResult<Vec<EventView>> {
    let limit = limit.unwrap_or(256).clamp(1, 10_000);
    let local = d.local.clone();
    Ok(blocking(move || -> hangar_control::Result<Vec<EventView>> {
        // Read on until `limit` events the caller may see are found or the stream ends, so
        // a page is never empty while visible events follow.
        let mut out = Vec::new();
        let mut after = since;
        loop {
            let page = local.events_since(after, 1000)?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = last.seq();
            for e in page {
                if caller.sees(event_owner(&e)) {
                    out.push(e);
                    if out.len() == limit {
                        return Ok(out);
                    }
                }
            }
        }
    })
    .await??)
}

/// `GET /v1/cluster/events` query.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterEventsQuery {
    /// Where to start: a previous page's `cursor` (`node:seq,…`; a node it does not name is
    /// read from its beginning).
    #[serde(default)]
    pub cursor: String,
    /// At most this many events from each node (default 256, at most 10000).
    pub limit: Option<usize>,
}

/// `GET /v1/cluster/events`: every live node's events after `cursor`, merged by time (what
/// `hangar events --cluster` reads). Each node filters its own by the caller's scope. Without
/// a cluster, this host's events.
#[utoipa::path(get, path = "/v1/cluster/events", params(ClusterEventsQuery),
    responses((status = 200, body = hangar_api::ClusterEvents), (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
pub(crate) async fn cluster_events(
    Ctx { d, caller }: Ctx, Query(q): Query<ClusterEventsQuery>,
) -> ApiResult<Json<hangar_api::ClusterEvents>> {
    let cursor = parse_cursor(&q.cursor)?;
    Ok(Json(d.cluster_events(caller, cursor, q.limit).await?))
}

/// A cursor's positions by node.
fn parse_cursor(text: &str) -> ApiResult<std::collections::BTreeMap<String, u64>> {
    let mut positions = std::collections::BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let position = part.split_once(':').and_then(|(node, seq)| {
            hangar_core::ids::check_name("node", node).ok()?;
            Some((node.to_string(), seq.parse::<u64>().ok()?))
        });
        let Some((node, seq)) = position else {
            return Err(ApiError::new(
                hangar_core::error::ErrorCode::InvalidArgument,
                format!("cursor part {part:?} is not node:seq"),
                Some("cursor".into()),
                Some("pass back the cursor of the previous page, or none".into()),
            ));
        };
        positions.insert(node, seq);
    }
    Ok(positions)
}

/// The tenant an event belongs to: its VM's (a tenant's VMs are named `tenant--name`);
/// reconcile passes (`fleet`) belong to the host.
pub(crate) fn event_owner(e: &EventView) -> Option<&str> {
    hangar_core::ids::tenant_prefix(e.vm())
}
