//! Fair sharing of the host's request workers between plugins: each plugin has a queue,
//! at most [`REQUEST_LANES`] of its requests run at a time (it has one fenced connection
//! per lane), and idle workers take the next plugin in round-robin order. A plugin with a
//! backlog of slow requests therefore holds at most that many workers; the others keep
//! serving its neighbours.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex};

/// Requests of one plugin that may run at once (each on a fenced connection of its own).
pub const REQUEST_LANES: usize = 2;

/// Per-plugin queues of jobs of type `J`.
pub struct Scheduler<J> {
    lanes: usize,
    state: Mutex<State<J>>,
    wake: Condvar,
}

struct State<J> {
    queues: HashMap<String, VecDeque<J>>,
    /// Plugins with a queued job and a free lane, each at most once, in the order they
    /// became ready.
    ready: VecDeque<String>,
    /// Jobs running per plugin.
    running: HashMap<String, usize>,
    closed: bool,
}

impl<J> Scheduler<J> {
    /// A scheduler running at most `lanes` jobs of one plugin at a time.
    pub fn new(lanes: usize) -> Scheduler<J> {
        Scheduler {
            lanes: lanes.max(1),
            state: Mutex::new(State {
                queues: HashMap::new(),
                ready: VecDeque::new(),
                running: HashMap::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Puts `plugin` on the ready list if it has a queued job and a free lane.
    fn make_ready(&self, state: &mut State<J>, plugin: &str) {
        let queued = state.queues.get(plugin).is_some_and(|q| !q.is_empty());
        let running = state.running.get(plugin).copied().unwrap_or(0);
        if queued && running < self.lanes && !state.ready.iter().any(|p| p == plugin) {
            state.ready.push_back(plugin.to_owned());
            self.wake.notify_one();
        }
    }

    /// Queues a job of `plugin`.
    pub fn submit(&self, plugin: &str, job: J) {
        let mut state = self.lock();
        state
            .queues
            .entry(plugin.to_owned())
            .or_default()
            .push_back(job);
        self.make_ready(&mut state, plugin);
    }

    /// Waits for the next job of a plugin with a free lane; `None` once closed.
    pub fn next(&self) -> Option<(String, J)> {
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            if let Some(plugin) = state.ready.pop_front() {
                let job = state
                    .queues
                    .get_mut(&plugin)
                    .and_then(|q| q.pop_front())
                    .expect("a ready plugin has a queued job");
                *state.running.entry(plugin.clone()).or_default() += 1;
                // Its next job, if a lane is still free, waits its turn behind the others.
                self.make_ready(&mut state, &plugin);
                return Some((plugin, job));
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks one of `plugin`'s running jobs finished, freeing its lane.
    pub fn done(&self, plugin: &str) {
        let mut state = self.lock();
        if let Some(running) = state.running.get_mut(plugin) {
            *running = running.saturating_sub(1);
        }
        self.make_ready(&mut state, plugin);
    }

    /// Wakes every worker and makes [`next`](Self::next) return `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_lane_runs_one_job_per_plugin_and_plugins_take_turns() {
        let s = Scheduler::new(1);
        for n in 0..3 {
            s.submit("slow", n);
        }
        s.submit("fast", 10);
        s.submit("fast", 11);
        assert_eq!(s.next(), Some(("slow".into(), 0)));
        // `slow` is running: the next worker gets `fast`, not slow's backlog.
        assert_eq!(s.next(), Some(("fast".into(), 10)));
        s.done("fast");
        assert_eq!(s.next(), Some(("fast".into(), 11)));
        s.done("slow");
        assert_eq!(s.next(), Some(("slow".into(), 1)));
        s.close();
        assert_eq!(s.next(), None);
    }

    #[test]
    fn a_plugin_backlog_holds_at_most_its_lanes_and_neighbours_interleave() {
        let s = Scheduler::new(2);
        for n in 0..5 {
            s.submit("slow", n);
        }
        s.submit("fast", 10);
        // Round robin: slow, fast, then slow's second lane; its third job waits.
        assert_eq!(s.next(), Some(("slow".into(), 0)));
        assert_eq!(s.next(), Some(("fast".into(), 10)));
        assert_eq!(s.next(), Some(("slow".into(), 1)));
        s.submit("fast", 11);
        assert_eq!(s.next(), Some(("fast".into(), 11)));
        // Both of slow's lanes are busy: nothing else is ready until one finishes.
        s.done("slow");
        assert_eq!(s.next(), Some(("slow".into(), 2)));
        s.close();
        assert_eq!(s.next(), None);
    }
}
