//! Running the real programs on crafted frames with BPF_PROG_TEST_RUN: the engine of `trace`,
//! of the kernel tests and of the per-packet benchmarks.

use std::time::Duration;

use aya::programs::{ProgramError, TestRun, TestRunOptions};
use dataplane_common::Reason;
use thiserror::Error;

use super::Datapath;

/// Where a packet meets skiff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// TC ingress on the host side of a pod's veth (packets a pod sends).
    TcPod,
    /// TC egress on the host side of a pod's veth (packets going into the pod).
    TcToPod,
    /// XDP on an external interface (packets from outside the node).
    XdpExt,
    /// TC ingress on an external interface: the same pipeline as `XdpExt`, where the node
    /// runs it there instead (`externalAcceleration`).
    TcExtIn,
    /// TC egress on an external interface (packets leaving the node).
    TcExt,
}

impl Hook {
    pub fn name(self) -> &'static str {
        match self {
            Hook::TcPod => "tc-ingress(pod veth)",
            Hook::TcToPod => "tc-egress(pod veth)",
            Hook::XdpExt => "xdp(external interface)",
            Hook::TcExtIn => "tc-ingress(external interface)",
            Hook::TcExt => "tc-egress(external interface)",
        }
    }
}

/// What the program did to one frame.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// The program's return value as the kernel reported it.
    pub ret: u32,
    /// True when the return value drops the packet at this hook.
    pub dropped: bool,
    /// True when the program sends the (rewritten) packet back out of the interface it
    /// arrived on: a REJECT reply (TC redirect to the same device, XDP_TX).
    pub sent_back: bool,
    /// The frame after the program (rewritten or not).
    pub frame: Vec<u8>,
    /// The counter the program incremented.
    pub reason: Option<Reason>,
    pub duration: Duration,
}

#[derive(Debug, Error)]
pub enum RunError {
    #[error("BPF_PROG_TEST_RUN failed")]
    Run(#[from] ProgramError),
    #[error("reading the counters")]
    Stats(#[from] aya::maps::MapError),
}

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_TX: u32 = 3;

fn run_raw(
    dp: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    out: &mut [u8],
    repeat: u32,
) -> Result<aya::programs::TestRunResult, ProgramError> {
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(out),
        repeat,
        ..Default::default()
    };
    match hook {
        Hook::TcPod => dp.tc_pod().test_run(opts),
        Hook::TcToPod => dp.tc_to_pod().test_run(opts),
        Hook::XdpExt => dp.xdp_ext().test_run(opts),
        Hook::TcExtIn => dp.tc_ext_in().test_run(opts),
        Hook::TcExt => dp.tc_ext().test_run(opts),
    }
}

/// Run `frame` once through `hook`, reporting the verdict, the output frame and the reason.
pub fn run(dp: &mut Datapath, hook: Hook, frame: &[u8]) -> Result<RunOutcome, RunError> {
    let before = dp.maps.stats()?;
    let mut out = vec![0u8; frame.len() + 256];
    let res = run_raw(dp, hook, frame, &mut out, 1)?;
    let after = dp.maps.stats()?;
    out.truncate(res.data_size_out as usize);
    let reason = after
        .iter()
        .find(|(r, n)| before.get(r).copied().unwrap_or(0) < **n)
        .map(|(r, _)| *r);
    let dropped = match hook {
        Hook::TcPod | Hook::TcToPod | Hook::TcExtIn | Hook::TcExt => {
            res.return_value == TC_ACT_SHOT
        }
        Hook::XdpExt => res.return_value == XDP_DROP,
    };
    // BPF_PROG_TEST_RUN does not perform redirects: the verdict is the return value, and
    // the only redirect skiff's TC programs issue is the reject reply to their own device.
    let sent_back = match hook {
        Hook::TcPod | Hook::TcExtIn => res.return_value == TC_ACT_REDIRECT,
        // The to-pod program never answers a packet itself.
        Hook::TcToPod => false,
        Hook::TcExt => false,
        Hook::XdpExt => res.return_value == XDP_TX,
    };
    Ok(RunOutcome {
        ret: res.return_value,
        dropped,
        sent_back,
        frame: out,
        reason,
        duration: res.duration,
    })
}

/// Average time per run over `repeat` runs of the same frame (for benchmarks).
pub fn time_per_packet(
    dp: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    repeat: u32,
) -> Result<Duration, RunError> {
    let mut out = vec![0u8; frame.len() + 256];
    Ok(run_raw(dp, hook, frame, &mut out, repeat)?.duration)
}
