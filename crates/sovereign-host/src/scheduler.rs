//! Fair sharing of the host's request workers between plugins: each plugin has a queue,
//! at most one of its requests runs at a time (it has one fenced connection), and idle
//! workers take the next plugin in round-robin order. A plugin with a backlog of slow
//! requests therefore holds at most one worker; the others keep serving its neighbours.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Condvar, Mutex};

/// Per-plugin queues of jobs of type `J`.
pub struct Scheduler<J> {
    state: Mutex<State<J>>,
    wake: Condvar,
}

struct State<J> {
    queues: HashMap<String, VecDeque<J>>,
    /// Plugins with a queued job and none running, in the order they became ready.
    ready: VecDeque<String>,
    running: HashSet<String>,
    closed: bool,
}

impl<J> Default for Scheduler<J> {
    fn default() -> Self {
        Scheduler {
            state: Mutex::new(State {
                queues: HashMap::new(),
                ready: VecDeque::new(),
                running: HashSet::new(),
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }
}

impl<J> Scheduler<J> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<J>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job of `plugin`.
    pub fn submit(&self, plugin: &str, job: J) {
        let mut state = self.lock();
        let queue = state.queues.entry(plugin.to_owned()).or_default();
        queue.push_back(job);
        let newly_ready = queue.len() == 1 && !state.running.contains(plugin);
        if newly_ready {
            state.ready.push_back(plugin.to_owned());
            self.wake.notify_one();
        }
    }

    /// Waits for the next job of a plugin with none running; `None` once closed.
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
                state.running.insert(plugin.clone());
                return Some((plugin, job));
            }
            state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Marks `plugin`'s running job finished; its next job becomes ready.
    pub fn done(&self, plugin: &str) {
        let mut state = self.lock();
        state.running.remove(plugin);
        if state.queues.get(plugin).is_some_and(|q| !q.is_empty()) {
            state.ready.push_back(plugin.to_owned());
            self.wake.notify_one();
        }
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
    fn one_job_per_plugin_runs_at_a_time_and_plugins_take_turns() {
        let s = Scheduler::default();
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
}
