//! `[serial]`.

use hangar_core::spec::*;

use super::constants::SERIAL_FIELDS;
use super::{Obj, Walker};

impl Walker<'_> {
    pub(super) fn serial(&mut self, top: &Obj<'_>) -> Option<SerialSpec> {
        let default = SerialSpec { mode: SerialMode::Socket };
        let Some(o) = self.section(top, "serial", SERIAL_FIELDS).ok()? else {
            return Some(default);
        };
        if !o.map.contains_key("mode") {
            return Some(default);
        }
        let modes =
            [("log", SerialMode::Log), ("socket", SerialMode::Socket), ("none", SerialMode::None)];
        self.choice(&o, "mode", &modes).map(|mode| SerialSpec { mode })
    }
}
