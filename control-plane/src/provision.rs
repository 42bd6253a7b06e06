//! (being written)

use std::sync::Arc;

use crate::{Options, State};

pub struct Provisioner {}

impl Provisioner {
    pub fn new(_options: &Options) -> Provisioner {
        Provisioner {}
    }

    pub async fn stop_all(&self) {}
}

pub async fn restore(_state: Arc<State>) {}
