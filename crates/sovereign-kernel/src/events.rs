//! Plugin events into the core: the sink the watchdog hands relayed events to. Each
//! event is stored in the inbox once (keyed by its id), audited, and handed to the
//! handler registered for its topic, in one transaction. Handlers come from the
//! platform layer ([`EventHandlers`]); the kernel knows no topic.

use std::collections::HashMap;
use std::sync::Arc;

use sovereign_db_core::CoreAccess;
use sovereign_db_core::events::{IncomingEvent, Ingested};
use sovereign_protocol::PluginEvent;

use crate::CorePool;
use crate::host::EventSink;

/// A handler of one topic; runs inside the event's transaction. An `Err` is recorded on
/// the inbox row.
pub type EventHandler =
    Arc<dyn Fn(&dyn CoreAccess, &IncomingEvent) -> Result<(), String> + Send + Sync>;

/// Handlers by topic. Events of a declared topic with no handler are stored and
/// audited only.
#[derive(Clone, Default)]
pub struct EventHandlers {
    by_topic: HashMap<String, EventHandler>,
}

impl EventHandlers {
    /// Registers `handler` for `topic` (replacing an earlier one).
    pub fn on(mut self, topic: &str, handler: EventHandler) -> EventHandlers {
        self.by_topic.insert(topic.to_owned(), handler);
        self
    }

    /// Runs the handler of `event`'s topic, if there is one.
    pub fn handle(&self, conn: &dyn CoreAccess, event: &IncomingEvent) -> Result<(), String> {
        match self.by_topic.get(&event.topic) {
            Some(handler) => handler(conn, event),
            None => Ok(()),
        }
    }
}

/// Stores relayed events in the core inbox (once per event id) and runs their handlers.
/// Returns the ids the host may mark delivered: stored, duplicates and rejected ones.
pub(crate) fn event_sink(core: CorePool, handlers: EventHandlers) -> EventSink {
    Arc::new(move |events: Vec<PluginEvent>| {
        let mut acknowledged = Vec::new();
        let result = core.run_blocking(|conn| {
            // The topics each plugin's manifest declares; an unknown plugin declares none.
            let mut declared: HashMap<String, Vec<String>> = HashMap::new();
            for event in &events {
                if !declared.contains_key(&event.plugin) {
                    let topics = sovereign_db_core::plugins::get(conn, &event.plugin)?
                        .map(|p| p.manifest.emits)
                        .unwrap_or_default();
                    declared.insert(event.plugin.clone(), topics);
                }
                let incoming = IncomingEvent {
                    event_id: event.event_id.clone(),
                    plugin: event.plugin.clone(),
                    topic: event.topic.clone(),
                    payload_json: event.payload_json.clone(),
                    emitted_at_ms: event.created_at_ms,
                };
                let topics = &declared[&event.plugin];
                match sovereign_db_core::events::ingest(conn, &incoming, topics, &|conn, event| {
                    handlers.handle(conn, event)
                })? {
                    Ingested::Stored | Ingested::Duplicate => {
                        acknowledged.push(event.event_id.clone())
                    }
                    Ingested::Rejected(reason) => {
                        tracing::warn!(plugin = %event.plugin, topic = %event.topic, reason, "plugin event rejected");
                        acknowledged.push(event.event_id.clone());
                    }
                }
            }
            // Handled inbox rows are kept for a month; their effects stay.
            sovereign_db_core::events::prune(conn, 30)?;
            Ok(())
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "storing plugin events failed; the host will offer them again");
        }
        acknowledged
    })
}
