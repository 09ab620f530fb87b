//! Agent log lines into the trace: a `tracing` layer that writes every INFO-or-above event as
//! `time member message key=value...`, the member being the one whose agent task is polled
//! (see [`crate::pause::current_member`]; cheaper than a span entered on every poll).
//! Installed per run with `set_default`, so parallel runs on other threads keep their own
//! traces.

use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};

use baton_core::Clock;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

use crate::world::{SimClock, Trace};

#[derive(Default)]
struct Fields {
    node: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "node" => self.node = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "node" => self.node = Some(format!("{value:?}")),
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

struct TraceLayer {
    trace: Arc<Mutex<Trace>>,
    clock: Arc<SimClock>,
    names: Vec<String>,
}

impl<S> Layer<S> for TraceLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let node = crate::pause::current_member()
            .and_then(|i| self.names.get(i))
            .map_or("-", String::as_str);
        let mut f = Fields::default();
        event.record(&mut f);
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR ",
            Level::WARN => "WARN ",
            _ => "",
        };
        let text = format!("{level}{}{}", f.message, f.rest);
        let now = self.clock.now();
        self.trace
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(now, node, &text);
    }
}

/// The subscriber for one run.
pub(crate) fn subscriber(
    trace: Arc<Mutex<Trace>>,
    clock: Arc<SimClock>,
    names: Vec<String>,
) -> impl Subscriber + Send + Sync {
    tracing_subscriber::registry().with(
        TraceLayer {
            trace,
            clock,
            names,
        }
        .with_filter(LevelFilter::INFO),
    )
}
