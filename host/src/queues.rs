//! Shared queues: process-wide, named per vm_id. The VM that registers a queue owns it: an
//! enqueue from any thread puts a notice in the owner's [`Mailbox`], and the owner's worker
//! calls `proxy_on_queue_ready` on its own thread when it drains the mailbox.
//!
//! Bounded, unlike Envoy's: a queue holds at most `max_items` items, the queues of one vm_id
//! at most [`MAX_BYTES_PER_VM`] bytes together, and a vm_id has at most [`MAX_QUEUES_PER_VM`]
//! queues with names of at most [`MAX_NAME`] bytes. A full queue drops its oldest items to
//! take a new one, and an item that cannot fit even so is dropped itself: the enqueue still
//! succeeds, because the Rust SDK's `enqueue_shared_queue` panics on any status but OK and
//! NOT_FOUND, and a consumer that does not keep up (or does not exist yet: instances are
//! created lazily) must not make every producer trap. Drops are counted ([`Enqueued`]) and
//! logged by the caller.
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
    vm_id: String,
    items: VecDeque<Vec<u8>>,
    owner: Weak<Mailbox>,
    root_context: u32,
}

/// What the queues of one vm_id hold together.
#[derive(Debug, Default)]
struct VmUse {
    queues: usize,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Inner {
    by_name: HashMap<(String, String), u32>,
    queues: HashMap<u32, Queue>,
    vms: HashMap<String, VmUse>,
    next_id: u32,
}

/// Why a queue operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueError {
    NotFound,
    /// A new queue past [`MAX_QUEUES_PER_VM`].
    TooMany,
    /// A name longer than [`MAX_NAME`].
    BadName,
    Empty,
}

/// What an enqueue did besides queueing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Enqueued {
    /// Older items dropped to make room.
    pub dropped_oldest: usize,
    /// The item itself was dropped: larger than what the vm_id's queues may hold, or the
    /// room is held by its other queues.
    pub dropped_item: bool,
}

/// Items one queue holds unless configured otherwise.
pub const DEFAULT_MAX_ITEMS: usize = 10_000;
/// The bytes all queues of one vm_id hold together.
pub const MAX_BYTES_PER_VM: usize = 64 << 20;
/// Queues one vm_id may register.
pub const MAX_QUEUES_PER_VM: usize = 1024;
/// Longest queue name, in bytes.
pub const MAX_NAME: usize = 1024;

/// Every shared queue of the process.
#[derive(Debug)]
pub struct SharedQueues {
    inner: Mutex<Inner>,
    max_items: usize,
    max_bytes_per_vm: usize,
}

impl Default for SharedQueues {
    fn default() -> Self {
        SharedQueues::new(DEFAULT_MAX_ITEMS)
    }
}

impl SharedQueues {
    pub fn new(max_items: usize) -> SharedQueues {
        SharedQueues {
            inner: Mutex::new(Inner::default()),
            max_items,
            max_bytes_per_vm: MAX_BYTES_PER_VM,
        }
    }

    /// Another cap on the bytes of one vm_id's queues (tests reach it without 64 MiB).
    pub fn with_max_bytes_per_vm(mut self, bytes: usize) -> SharedQueues {
        self.max_bytes_per_vm = bytes;
        self
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
    ) -> Result<u32, QueueError> {
        if name.len() > MAX_NAME {
            return Err(QueueError::BadName);
        }
        let mut inner = self.lock();
        let key = (vm_id.to_owned(), name.to_owned());
        if let Some(&id) = inner.by_name.get(&key) {
            if let Some(queue) = inner.queues.get_mut(&id) {
                queue.owner = Arc::downgrade(owner);
                queue.root_context = root_context;
            }
            return Ok(id);
        }
        let vm = inner.vms.entry(vm_id.to_owned()).or_default();
        if vm.queues >= MAX_QUEUES_PER_VM {
            return Err(QueueError::TooMany);
        }
        vm.queues += 1;
        inner.next_id += 1;
        let id = inner.next_id;
        inner.by_name.insert(key, id);
        inner.queues.insert(
            id,
            Queue {
                vm_id: vm_id.to_owned(),
                items: VecDeque::new(),
                owner: Arc::downgrade(owner),
                root_context,
            },
        );
        Ok(id)
    }

    pub fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.lock()
            .by_name
            .get(&(vm_id.to_owned(), name.to_owned()))
            .copied()
    }

    /// Queues `value`, dropping the queue's oldest items when it is full (see the module's
    /// documentation); NotFound for an unknown queue only.
    pub fn enqueue(&self, id: u32, value: &[u8]) -> Result<Enqueued, QueueError> {
        let mut done = Enqueued::default();
        let (owner, root) = {
            let mut guard = self.lock();
            let Inner { queues, vms, .. } = &mut *guard;
            let queue = queues.get_mut(&id).ok_or(QueueError::NotFound)?;
            let vm = vms.entry(queue.vm_id.clone()).or_default();
            if value.len() > self.max_bytes_per_vm {
                done.dropped_item = true;
                return Ok(done);
            }
            while queue.items.len() >= self.max_items
                || vm.bytes + value.len() > self.max_bytes_per_vm
            {
                let Some(old) = queue.items.pop_front() else {
                    break;
                };
                vm.bytes -= old.len();
                done.dropped_oldest += 1;
            }
            if vm.bytes + value.len() > self.max_bytes_per_vm || self.max_items == 0 {
                done.dropped_item = true;
                return Ok(done);
            }
            vm.bytes += value.len();
            queue.items.push_back(value.to_vec());
            (queue.owner.upgrade(), queue.root_context)
        };
        if let Some(owner) = owner {
            owner.notify(root, id);
        }
        Ok(done)
    }

    pub fn dequeue(&self, id: u32) -> Result<Vec<u8>, QueueError> {
        let mut guard = self.lock();
        let Inner { queues, vms, .. } = &mut *guard;
        let queue = queues.get_mut(&id).ok_or(QueueError::NotFound)?;
        let item = queue.items.pop_front().ok_or(QueueError::Empty)?;
        if let Some(vm) = vms.get_mut(&queue.vm_id) {
            vm.bytes -= item.len();
        }
        Ok(item)
    }

    /// The items a queue holds (tests, debugging).
    pub fn len(&self, id: u32) -> Option<usize> {
        self.lock().queues.get(&id).map(|q| q.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_resolve_enqueue_dequeue_notify() {
        let queues = SharedQueues::default();
        let mailbox = Mailbox::new();
        let id = queues.register("vm", "q", &mailbox, 1).unwrap();
        assert_eq!(queues.resolve("vm", "q"), Some(id));
        assert_eq!(queues.resolve("other", "q"), None);
        assert_eq!(queues.dequeue(id), Err(QueueError::Empty));
        queues.enqueue(id, b"a").unwrap();
        queues.enqueue(id, b"b").unwrap();
        assert_eq!(mailbox.drain(), vec![(1, id)]);
        assert_eq!(queues.dequeue(id).unwrap(), b"a");
        assert_eq!(queues.enqueue(id + 1, b"x"), Err(QueueError::NotFound));
    }

    #[test]
    fn a_full_queue_drops_its_oldest_items() {
        let queues = SharedQueues::new(3);
        let mailbox = Mailbox::new();
        let id = queues.register("vm", "q", &mailbox, 1).unwrap();
        for item in [b"1", b"2", b"3"] {
            assert_eq!(queues.enqueue(id, item), Ok(Enqueued::default()));
        }
        // At the limit: the fourth takes the first one's place.
        assert_eq!(
            queues.enqueue(id, b"4"),
            Ok(Enqueued {
                dropped_oldest: 1,
                dropped_item: false
            })
        );
        assert_eq!(queues.len(id), Some(3));
        assert_eq!(queues.dequeue(id).unwrap(), b"2");
        assert_eq!(queues.dequeue(id).unwrap(), b"3");
        assert_eq!(queues.dequeue(id).unwrap(), b"4");
        assert_eq!(queues.dequeue(id), Err(QueueError::Empty));
    }

    #[test]
    fn the_queues_of_a_vm_id_share_a_byte_cap() {
        let queues = SharedQueues::new(100).with_max_bytes_per_vm(10);
        let mailbox = Mailbox::new();
        let a = queues.register("vm", "a", &mailbox, 1).unwrap();
        let b = queues.register("vm", "b", &mailbox, 1).unwrap();
        let other = queues.register("other", "a", &mailbox, 1).unwrap();
        // Exactly at the cap.
        assert_eq!(queues.enqueue(a, b"12345"), Ok(Enqueued::default()));
        assert_eq!(queues.enqueue(b, b"12345"), Ok(Enqueued::default()));
        // One byte past it: a's oldest goes, and the item fits.
        assert_eq!(
            queues.enqueue(a, b"1"),
            Ok(Enqueued {
                dropped_oldest: 1,
                dropped_item: false
            })
        );
        // b's bytes are not a's to drop: an item that does not fit then is dropped itself.
        assert_eq!(
            queues.enqueue(a, b"123456"),
            Ok(Enqueued {
                dropped_oldest: 1,
                dropped_item: true
            })
        );
        assert_eq!(queues.len(a), Some(0));
        // Larger than the whole cap: dropped, nothing else touched.
        assert_eq!(
            queues.enqueue(b, &[0; 11]),
            Ok(Enqueued {
                dropped_oldest: 0,
                dropped_item: true
            })
        );
        assert_eq!(queues.len(b), Some(1));
        // Dequeuing frees the bytes; another vm_id has its own cap.
        assert_eq!(queues.dequeue(b).unwrap(), b"12345");
        assert_eq!(queues.enqueue(a, b"0123456789"), Ok(Enqueued::default()));
        assert_eq!(
            queues.enqueue(other, b"0123456789"),
            Ok(Enqueued::default())
        );
    }

    #[test]
    fn queue_names_and_counts_are_capped_per_vm_id() {
        let queues = SharedQueues::default();
        let mailbox = Mailbox::new();
        assert!(queues
            .register("vm", &"n".repeat(MAX_NAME), &mailbox, 1)
            .is_ok());
        assert_eq!(
            queues.register("vm", &"n".repeat(MAX_NAME + 1), &mailbox, 1),
            Err(QueueError::BadName)
        );
        for i in 1..MAX_QUEUES_PER_VM {
            queues.register("vm", &i.to_string(), &mailbox, 1).unwrap();
        }
        // At the cap: a new name is refused, a known one still resolves and re-registers.
        assert_eq!(
            queues.register("vm", "one-more", &mailbox, 1),
            Err(QueueError::TooMany)
        );
        assert_eq!(queues.resolve("vm", "one-more"), None);
        let known = queues.resolve("vm", "7");
        assert_eq!(queues.register("vm", "7", &mailbox, 2).ok(), known);
        assert!(queues.register("other", "one-more", &mailbox, 1).is_ok());
    }
}
