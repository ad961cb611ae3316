//! The accelerator decision: KVM only when it really works here.

use hangar_core::spec::AccelRequest;

use crate::{Accel, KvmFacts, PlanError};

/// Decides the accelerator: kvm only when it really works (see [`KvmFacts::verdict`]).
pub fn resolve_accel(
    requested: AccelRequest, kvm: &KvmFacts,
) -> Result<(Accel, String), PlanError> {
    let (usable, why) = kvm.verdict();
    match requested {
        AccelRequest::Tcg => Ok((Accel::Tcg, "tcg: requested by the spec".into())),
        AccelRequest::Kvm if usable => {
            Ok((Accel::Kvm, format!("kvm: requested by the spec; {why}")))
        }
        AccelRequest::Kvm => Err(PlanError::AccelUnavailable { reason: why.into() }),
        AccelRequest::Auto if usable => Ok((Accel::Kvm, format!("kvm: {why}"))),
        AccelRequest::Auto => Ok((Accel::Tcg, format!("tcg: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_core::error::{Coded, ErrorCode};

    fn kvm(rw: bool, flags: bool, pvm: bool) -> KvmFacts {
        KvmFacts { dev_kvm_rw: rw, cpu_virt_flags: flags, kvm_pvm: pvm }
    }

    #[test]
    fn accel_resolution_table() {
        use AccelRequest::*;
        let good = kvm(true, true, false);
        assert_eq!(resolve_accel(Auto, &good).unwrap().0, Accel::Kvm);
        assert_eq!(resolve_accel(Kvm, &good).unwrap().0, Accel::Kvm);
        assert_eq!(resolve_accel(Tcg, &good).unwrap().0, Accel::Tcg);
        for bad in [kvm(false, true, false), kvm(true, false, false), kvm(true, true, true)] {
            let (accel, reason) = resolve_accel(Auto, &bad).unwrap();
            assert_eq!(accel, Accel::Tcg);
            assert!(reason.starts_with("tcg: "), "{reason}");
            let err = resolve_accel(Kvm, &bad).unwrap_err();
            assert_eq!(err.code(), ErrorCode::AccelUnavailable);
        }
        // This host's situation: /dev/kvm opens, but it is kvm_pvm without vmx/svm.
        let (_, reason) = resolve_accel(Auto, &kvm(true, false, true)).unwrap();
        assert!(reason.contains("vmx"), "{reason}");
    }
}
