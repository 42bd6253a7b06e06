//! Shared queues: process-wide, named per vm_id. The VM that registers a queue owns it: an
//! enqueue from any thread puts a notice in the owner's [`Mailbox`], and the owner's worker
//! calls `proxy_on_queue_ready` on its own thread when it drains the mailbox.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};

/// Notices for one VM: `(root context id, queue id)` pairs whose queues got data.
#[derive(Debug, Default)]
pub struct Mailbox {
    ready: Mutex<Vec<(u32, u32)>>,
}

impl Mailbox {
    pub fn new() -> Arc<Mailbox> {
        Arc::new(Mailbox::default())
    }

    fn notify(&self, root_context: u32, queue: u32) {
        let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if !ready.contains(&(root_context, queue)) {
            ready.push((root_context, queue));
        }
    }

    /// Takes every pending notice.
    pub fn drain(&self) -> Vec<(u32, u32)> {
        std::mem::take(&mut *self.ready.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: Weak<Mailbox>,
    root_context: u32,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    next_id: u32,
}

/// Why an enqueue failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    NotFound,
    Full,
    Empty,
}

/// Every shared queue of the process.
#[derive(Debug)]
pub struct SharedQueues {
    inner: Mutex<Inner>,
    max_items: usize,
}

impl Default for SharedQueues {
    fn default() -> Self {
        SharedQueues::new(10_000)
    }
}

impl SharedQueues {
    pub fn new(max_items: usize) -> SharedQueues {
        SharedQueues {
            inner: Mutex::new(Inner::default()),
            max_items,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or re-registers, taking ownership) a queue; returns its id.
    pub fn register(
        &self,
        vm_id: &str,
        name: &str,
        owner: &Arc<Mailbox>,
        root_context: u32,
    ) -> u32 {
        let mut inner = self.lock();
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(&id) = inner.by_name.get(&key) {
            if let Some(queue) = inner.queues.get_mut(&id) {
                queue.owner = Arc::downgrade(owner);
                queue.root_context = root_context;
            }
            return id;
        }
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_name.insert(key, id);
        inner.queues.insert(
            id,
            Queue {
                items: VecDeque::new(),
                owner: Arc::downgrade(owner),
                root_context,
            },
        );
        id
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.lock()
            .by_name
            .get(&(vm_id.to_owned(), name.to_owned()))
            .copied()
    }

    pub fn enqueue(&self, id: u32, value: &[u8]) -> Result<(), QueueError> {
        let (owner, root) = {
            let mut inner = self.lock();
            let queue = inner.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
            if queue.items.len() >= self.max_items {
                return Err(QueueError::Full);
            }
            queue.items.push_back(value.to_vec());
            (queue.owner.upgrade(), queue.root_context)
        };
        if let Some(owner) = owner {
            owner.notify(root, id);
        }
        Ok(())
    }

    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, QueueError> {
        let mut inner = self.lock();
        let queue = inner.queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        queue.items.pop_front().ok_or(QueueError::Empty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_resolve_enqueue_dequeue_notify() {
        let queues = SharedQueues::default();
        let mailbox = Mailbox::new();
        let id = queues.register("vm", "q", &mailbox, 1);
        assert_eq!(queues.resolve("vm", "q"), Some(id));
        assert_eq!(queues.resolve("other", "q"), None);
        assert_eq!(queues.dequeue(id), Err(QueueError::Empty));
        queues.enqueue(id, b"a").unwrap();
        queues.enqueue(id, b"b").unwrap();
        assert_eq!(mailbox.drain(), vec![(1, id)]);
        assert_eq!(queues.dequeue(id).unwrap(), b"a");
        assert_eq!(queues.enqueue(id + 1, b"x"), Err(QueueError::NotFound));
    }
}
