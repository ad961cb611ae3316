//! `Nics`: attach, detach, list.

use hangar_core::error::ErrorCode;
use hangar_core::ids::DeviceName;
use hangar_core::spec::{NicMode, NicSpec};

use crate::Ctx;

use super::*;

pub(super) fn n01_nics(ctx: &Ctx<'_>) -> Check {
    let vm = name("conf-n01");
    ok(ctx.engine.define(&ctx.spec("conf-n01")), "define")?;
    let before = ok(ctx.engine.list_nics(&vm), "list")?.len();
    let nic = NicSpec {
        network: None,
        name: DeviceName::new("conf-net9").unwrap(),
        mode: NicMode::User,
        forward: vec![],
    };
    ok(ctx.engine.attach_nic(&vm, &nic), "attach")?;
    expect_code(ctx.engine.attach_nic(&vm, &nic), ErrorCode::NicExists, "attach twice")?;
    let nics = ok(ctx.engine.list_nics(&vm), "list")?;
    ensure!(nics.len() == before + 1 && nics.last() == Some(&nic), "nics now {nics:?}");
    ok(ctx.engine.detach_nic(&vm, &nic.name), "detach")?;
    expect_code(ctx.engine.detach_nic(&vm, &nic.name), ErrorCode::NicNotFound, "detach twice")?;
    ok(ctx.engine.undefine(&vm), "undefine")
}
