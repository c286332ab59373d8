//! Devices and the agent as the maps describe them: `xlb_devices` (what the datapath learns of
//! an uplink's XDP_TX, read and written by programs) and `xlb_agent` (the agent's own status,
//! written by the agent, read by `xlb status`).

/// Slots of `xlb_devices`: a device's slot is `ifindex % DEVICE_SLOTS` (an array, so the
/// datapath reads it without a hash lookup); the slot names its owner in `DevState::ifindex`.
pub const DEVICE_SLOTS: u32 = 1024;

/// The slot of device `ifindex` in `xlb_devices`.
#[inline(always)]
pub const fn device_slot(ifindex: u32) -> u32 {
    ifindex % DEVICE_SLOTS
}

/// Value of `xlb_devices`: one uplink with XDP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DevState {
    /// The device owning this slot (0: free); a slot of another device is never used.
    pub ifindex: u32,
    /// `dev_flags::*`.
    pub flags: u32,
    /// Frames XDP_TX could not send on this device (counted by the tracepoint programs).
    pub tx_errors: u64,
    /// Seconds of CLOCK_MONOTONIC of the last XDP_TX error (0: none).
    pub last_error: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// `DevState::flags`.
pub mod dev_flags {
    /// XDP_TX lost frames on this device: XDP leaves the flows it would send back out to tc
    /// (`bpf_redirect_neigh`), which takes effect for every flow within a second.
    pub const TX_FALLBACK: u32 = 1 << 0;
}

/// Devices `AgentStatus` describes.
pub const STATUS_DEVICES: usize = 32;
/// Bytes of each text field of `AgentStatus` (NUL padded, truncated if longer).
pub const STATUS_TEXT: usize = 192;

/// One device the agent attached, as `AgentStatus` lists it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Interface index (0: unused entry).
    pub ifindex: u32,
    /// `dev_role::*`.
    pub role: u8,
    /// `dev_mode::*`.
    pub mode: u8,
    /// `dev_reason::*`: why this mode.
    pub reason: u8,
    /// Explicit padding.
    pub _pad: u8,
    /// Interface name, NUL padded.
    pub name: [u8; 16],
}

/// `DeviceStatus::role`.
pub mod dev_role {
    /// Pod-facing device (tc ingress).
    pub const POD: u8 = 1;
    /// Uplink (tc ingress, XDP when its mode says so).
    pub const UPLINK: u8 = 2;
}

/// `DeviceStatus::mode`: what runs on the device.
pub mod dev_mode {
    /// tc only.
    pub const TC: u8 = 1;
    /// Native (driver) XDP, then tc.
    pub const XDP_NATIVE: u8 = 2;
    /// Generic (skb) XDP, then tc.
    pub const XDP_GENERIC: u8 = 3;
    /// Attaching failed (see the agent's log).
    pub const FAILED: u8 = 4;
}

/// `DeviceStatus::reason`: why the agent chose the device's mode.
pub mod dev_reason {
    /// A pod-facing device: tc.
    pub const POD_DEVICE: u8 = 1;
    /// `--xdp-mode` asked for it.
    pub const REQUESTED: u8 = 2;
    /// `auto`: the driver runs XDP natively.
    pub const NATIVE_DRIVER: u8 = 3;
    /// `auto`: a veth, whose XDP would stop GRO/GSO aggregation of the peer's traffic and
    /// whose XDP_TX loses frames unless its peer runs XDP.
    pub const VETH: u8 = 4;
    /// `auto`: a virtual device (bridge, bond, VLAN, tunnel, ...): tc.
    pub const VIRTUAL: u8 = 5;
    /// `auto`: the driver has no native XDP (generic XDP would cost more than tc).
    pub const NO_NATIVE: u8 = 6;
    /// `native` was asked for but the driver has none: generic XDP.
    pub const NATIVE_UNSUPPORTED: u8 = 7;
    /// `native` was asked for on a device whose XDP_TX the agent knows will lose frames.
    pub const REQUESTED_MAY_DROP: u8 = 8;

    /// Text of a reason.
    pub const fn text(reason: u8) -> &'static str {
        match reason {
            POD_DEVICE => "pod-facing device",
            REQUESTED => "as --xdp-mode asks",
            NATIVE_DRIVER => "the driver runs XDP natively",
            VETH => {
                "veth: XDP would stop GRO/GSO aggregation, and XDP_TX loses frames unless \
                     the peer runs XDP"
            }
            VIRTUAL => "virtual device: tc",
            NO_NATIVE => "no native XDP in the driver (generic XDP costs more than tc)",
            NATIVE_UNSUPPORTED => "native XDP unsupported by the driver: generic XDP",
            REQUESTED_MAY_DROP => {
                "as --xdp-mode asks, but XDP_TX will lose frames (peer has \
                                   no XDP): XDP falls back to tc after the first errors"
            }
            _ => "",
        }
    }
}

/// `AgentStatus::warnings`.
pub mod agent_warn {
    /// The agent is ready but no device has an xlb program.
    pub const NO_DEVICE: u32 = 1 << 0;
    /// XDP_TX lost frames on an uplink (see `xlb_devices`).
    pub const XDP_TX_ERRORS: u32 = 1 << 1;
    /// Some service could not be programmed at the last sync.
    pub const SYNC_FAILING: u32 = 1 << 2;
    /// A source reports problems (a broken file, an invalid object).
    pub const SOURCE_PROBLEMS: u32 = 1 << 3;
    /// Socket-level load balancing is off although asked for (`--cgroup auto` found none).
    pub const NO_SOCKET_LB: u32 = 1 << 4;
    /// An uplink runs native XDP whose XDP_TX the agent knows loses frames.
    pub const NATIVE_MAY_DROP: u32 = 1 << 5;
}

/// `AgentStatus::pins`: how the agent reaches its pin directory.
pub mod pins_via {
    /// In its own mount namespace, which is the host's.
    pub const LOCAL: u8 = 1;
    /// Through the host's mount namespace (the agent runs in a private one, e.g. under
    /// `ip netns exec`): the pins are the host's and outlive the agent.
    pub const HOST: u8 = 2;
}

/// Value of `xlb_agent` (index 0): what the running (or last) agent says of itself. Times are
/// seconds of CLOCK_MONOTONIC, the clock of conntrack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentStatus {
    /// Process id, in the agent's pid namespace.
    pub pid: u32,
    /// `LAYOUT_VERSION` of the agent.
    pub layout_version: u32,
    /// When the agent started.
    pub started: u32,
    /// Last heartbeat (every 2 s while running): `xlb status` says "running" while it is fresh.
    pub heartbeat: u32,
    /// When the agent stopped cleanly (0 while it runs, or when it was killed).
    pub stopped: u32,
    /// Last sync pass.
    pub last_sync: u32,
    /// Services that failed to program at the last sync.
    pub sync_failures: u32,
    /// Problems the sources report now (files, objects).
    pub problems: u32,
    /// `agent_warn::*`.
    pub warnings: u32,
    /// Services programmed.
    pub services: u32,
    /// Backends programmed.
    pub backends: u32,
    /// Inode of the agent's pid namespace: a reader in the same one checks `pid` is alive.
    pub pid_ns: u32,
    /// The agent process's start time (clock ticks after boot, `/proc/PID/stat` field 22):
    /// tells the agent from a later process that got its pid.
    pub start_ticks: u64,
    /// `pins_via::*`.
    pub pins: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
    /// `xlb` version and commit, NUL padded.
    pub version: [u8; 32],
    /// The first problem, NUL padded.
    pub first_problem: [u8; STATUS_TEXT],
    /// cgroup of socket-level load balancing (empty: off), NUL padded.
    pub cgroup: [u8; STATUS_TEXT],
    /// Attached devices.
    pub devices: [DeviceStatus; STATUS_DEVICES],
}

impl AgentStatus {
    /// An all-zero status (no agent ever wrote one).
    pub const ZERO: Self = Self {
        pid: 0,
        layout_version: 0,
        started: 0,
        heartbeat: 0,
        stopped: 0,
        last_sync: 0,
        sync_failures: 0,
        problems: 0,
        warnings: 0,
        services: 0,
        backends: 0,
        pid_ns: 0,
        start_ticks: 0,
        pins: 0,
        _pad: [0; 7],
        version: [0; 32],
        first_problem: [0; STATUS_TEXT],
        cgroup: [0; STATUS_TEXT],
        devices: [DeviceStatus {
            ifindex: 0,
            role: 0,
            mode: 0,
            reason: 0,
            _pad: 0,
            name: [0; 16],
        }; STATUS_DEVICES],
    };
}
