//! `Capabilities`: an operation the engine lacks is refused with `E_UNSUPPORTED`.

use hangar_core::cancel::CancelToken;
use hangar_core::contracts::*;
use hangar_core::error::ErrorCode;
use hangar_core::ids::{DeviceName, SnapshotId};
use hangar_core::lifecycle::VmState;
use hangar_core::spec::{NicMode, NicSpec};

use crate::{skip, Ctx};

use Capability::*;
use VmState::*;

use super::*;

pub(super) fn c01_missing_capabilities_are_refused(ctx: &Ctx<'_>) -> Check {
    let caps = ctx.engine.capabilities();
    let missing: Vec<_> = Capability::ALL.iter().filter(|c| !caps.has(**c)).collect();
    if missing.is_empty() {
        return Err(skip("the engine has every capability; no refusal to check"));
    }
    let vm = running(ctx, "conf-c01")?;
    let c = CancelToken::new();
    for cap in missing {
        let code = |r: hangar_core::Result<()>| {
            expect_code(r, ErrorCode::Unsupported, &format!("{cap:?}"))
        };
        match cap {
            Pause => code(ctx.engine.pause(&vm).map(|_| ()))?,
            Reboot => code(ctx.engine.reboot(&vm, &c).map(|_| ()))?,
            MemorySnapshots => code(
                ctx.engine
                    .save(&vm, &SnapshotId::new("conf-c01").unwrap(), SaveMode::KeepPaused, &c)
                    .map(|_| ()),
            )?,
            Volumes => code(
                ctx.engine
                    .create_volume(&vol("conf-c01"), &VolumeSource::Blank { size_mib: 1 })
                    .map(|_| ()),
            )?,
            NicHotplug => code(ctx.engine.attach_nic(
                &vm,
                &NicSpec {
                    network: None,
                    name: DeviceName::new("conf-hot").unwrap(),
                    mode: NicMode::User,
                    forward: vec![],
                },
            ))?,
            GuestAgent => code(ctx.engine.guest_info(&vm).map(|_| ()))?,
            // Observable only through other operations: a stop must still work (by force).
            GracefulStop | DiskSnapshots => {}
        }
    }
    expect_state(ctx, &vm, Running, "refused operations")?;
    teardown(ctx, &vm)
}
