//! The machine lifecycle, as MAAS defines it, as a pure function:
//! `(state, action) -> (state', effects)`.
//!
//! ```text
//! New ─commission→ Commissioning ─ok→ Ready ─allocate→ Allocated ─deploy→ Deploying ─ok→ Deployed
//!                       │fail/timeout            ↑                            │fail/timeout    │release
//!                       ↓                        │                            ↓                ↓
//!              Failed commissioning       Releasing / Disk erasing ←─release─ Failed deployment
//! ```
//! Every in-progress status has a Failed twin, entered on a reported failure
//! or when the watchdog expires. Side effects (power, watchdog, tokens) are
//! returned as [`Effect`]s for the caller to carry out, so this module never
//! touches a database, a BMC or the clock.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ModelError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineStatus {
    New,
    Commissioning,
    FailedCommissioning,
    Testing,
    FailedTesting,
    Ready,
    Allocated,
    Deploying,
    FailedDeployment,
    Deployed,
    Releasing,
    FailedReleasing,
    DiskErasing,
    FailedDiskErasing,
    EnteringRescueMode,
    FailedEnteringRescueMode,
    RescueMode,
    ExitingRescueMode,
    FailedExitingRescueMode,
    Broken,
}

use MachineStatus::*;

impl MachineStatus {
    pub const ALL: [MachineStatus; 20] = [
        New,
        Commissioning,
        FailedCommissioning,
        Testing,
        FailedTesting,
        Ready,
        Allocated,
        Deploying,
        FailedDeployment,
        Deployed,
        Releasing,
        FailedReleasing,
        DiskErasing,
        FailedDiskErasing,
        EnteringRescueMode,
        FailedEnteringRescueMode,
        RescueMode,
        ExitingRescueMode,
        FailedExitingRescueMode,
        Broken,
    ];

    /// The snake_case name used in the API, the store and filters.
    pub fn as_str(self) -> &'static str {
        match self {
            New => "new",
            Commissioning => "commissioning",
            FailedCommissioning => "failed_commissioning",
            Testing => "testing",
            FailedTesting => "failed_testing",
            Ready => "ready",
            Allocated => "allocated",
            Deploying => "deploying",
            FailedDeployment => "failed_deployment",
            Deployed => "deployed",
            Releasing => "releasing",
            FailedReleasing => "failed_releasing",
            DiskErasing => "disk_erasing",
            FailedDiskErasing => "failed_disk_erasing",
            EnteringRescueMode => "entering_rescue_mode",
            FailedEnteringRescueMode => "failed_entering_rescue_mode",
            RescueMode => "rescue_mode",
            ExitingRescueMode => "exiting_rescue_mode",
            FailedExitingRescueMode => "failed_exiting_rescue_mode",
            Broken => "broken",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        let wanted = s.trim().to_ascii_lowercase().replace([' ', '-'], "_");
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == wanted)
            .ok_or_else(|| ModelError::field("status", s, "unknown machine status"))
    }

    /// The Failed twin of an in-progress status.
    pub fn failed_twin(self) -> Option<MachineStatus> {
        Some(match self {
            Commissioning => FailedCommissioning,
            Testing => FailedTesting,
            Deploying => FailedDeployment,
            Releasing => FailedReleasing,
            DiskErasing => FailedDiskErasing,
            EnteringRescueMode => FailedEnteringRescueMode,
            ExitingRescueMode => FailedExitingRescueMode,
            _ => return None,
        })
    }

    /// An in-progress status is one a worker or the machine must finish; the
    /// watchdog guards exactly these.
    pub fn is_in_progress(self) -> bool {
        self.failed_twin().is_some()
    }

    pub fn is_failed(self) -> bool {
        Self::ALL.iter().any(|s| s.failed_twin() == Some(self))
    }

    /// Who reports that an in-progress status is done: the machine itself
    /// (from the ephemeral environment or first boot), or the power worker
    /// once its power operation has succeeded.
    pub fn completed_by(self) -> Option<Completion> {
        match self {
            Releasing | ExitingRescueMode => Some(Completion::PowerOperation),
            s if s.is_in_progress() => Some(Completion::Machine),
            _ => None,
        }
    }

    /// Default watchdog timeout in seconds for an in-progress status: how
    /// long a machine may go without reporting before it is failed.
    pub fn default_timeout_secs(self) -> Option<i64> {
        Some(match self {
            Commissioning | Testing => 1200,
            Deploying => 1800,
            DiskErasing => 3600,
            Releasing | ExitingRescueMode => 300,
            EnteringRescueMode => 1200,
            _ => return None,
        })
    }
}

impl fmt::Display for MachineStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.as_str().replace('_', " "))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    Machine,
    PowerOperation,
}

/// How disks are erased on release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EraseMode {
    /// Power off and return to the pool; data stays on disk.
    #[default]
    None,
    /// Wipe partition tables and the first and last megabytes of each disk.
    Quick,
    /// Overwrite every block of every disk.
    Full,
}

impl EraseMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EraseMode::None => "none",
            EraseMode::Quick => "quick",
            EraseMode::Full => "full",
        }
    }

    pub fn parse(s: &str) -> Result<Self, ModelError> {
        match s {
            "none" | "" => Ok(EraseMode::None),
            "quick" => Ok(EraseMode::Quick),
            "full" => Ok(EraseMode::Full),
            other => Err(ModelError::field(
                "erase",
                other,
                "expected none, quick or full",
            )),
        }
    }
}

/// Everything that changes a machine's status. The first group is asked for
/// by users; the second is reported by the machine, the power worker or the
/// watchdog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Commission,
    Test,
    Allocate {
        owner: String,
    },
    Deploy {
        owner: String,
    },
    Release {
        erase: EraseMode,
    },
    Abort,
    MarkBroken {
        reason: String,
    },
    MarkFixed,
    Rescue,
    ExitRescue,
    /// The in-progress operation finished well.
    Succeeded,
    /// The in-progress operation failed; the reason goes to the event log.
    Failed {
        reason: String,
    },
    /// The machine stopped reporting before its deadline.
    WatchdogExpired,
}

impl Action {
    /// The user-facing name, as in `kumo machines <name>` and the API.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Commission => "commission",
            Action::Test => "test",
            Action::Allocate { .. } => "allocate",
            Action::Deploy { .. } => "deploy",
            Action::Release { .. } => "release",
            Action::Abort => "abort",
            Action::MarkBroken { .. } => "mark-broken",
            Action::MarkFixed => "mark-fixed",
            Action::Rescue => "rescue",
            Action::ExitRescue => "exit-rescue",
            Action::Succeeded => "report-success",
            Action::Failed { .. } => "report-failure",
            Action::WatchdogExpired => "watchdog-expire",
        }
    }

    /// One instance of each user action, to derive the allowed list from
    /// [`apply`] itself rather than from a second table that could drift.
    fn user_actions() -> [Action; 10] {
        [
            Action::Commission,
            Action::Test,
            Action::Allocate {
                owner: String::new(),
            },
            Action::Deploy {
                owner: String::new(),
            },
            Action::Release {
                erase: EraseMode::None,
            },
            Action::Abort,
            Action::MarkBroken {
                reason: String::new(),
            },
            Action::MarkFixed,
            Action::Rescue,
            Action::ExitRescue,
        ]
    }
}

/// Power and bookkeeping work the caller must carry out after a transition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "effect")]
pub enum Effect {
    PowerOn,
    PowerOff,
    /// Power on if off, else reset: the machine must boot afresh from the
    /// network to pick up its new boot script.
    PowerCycle,
    /// Arm the watchdog with the status's timeout.
    StartWatchdog,
    StopWatchdog,
    /// Give the machine a fresh token for the machine-facing API.
    IssueMachineToken,
    RevokeMachineToken,
}

/// The part of a machine the lifecycle reads and writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LifecycleState {
    pub status: MachineStatus,
    /// Where to return on abort, exit-rescue, test completion or mark-fixed.
    pub previous_status: Option<MachineStatus>,
    pub owner: Option<String>,
    /// Whether commissioning ever succeeded (hardware inventory is known).
    pub commissioned: bool,
    pub erase: EraseMode,
}

impl LifecycleState {
    pub fn new() -> Self {
        LifecycleState {
            status: New,
            previous_status: None,
            owner: None,
            commissioned: false,
            erase: EraseMode::None,
        }
    }
}

impl Default for LifecycleState {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: MachineStatus,
    pub state: LifecycleState,
    pub effects: Vec<Effect>,
}

fn is_any_failed(s: MachineStatus) -> bool {
    s.is_failed()
}

/// Applies `action` to `state`. An action the status does not allow is
/// `Err(None)`; callers turn it into [`ModelError::IllegalTransition`] with
/// [`allowed_actions`].
fn step(state: &LifecycleState, action: &Action) -> Option<(LifecycleState, Vec<Effect>)> {
    use Effect::*;
    let s = state.status;
    let mut next = state.clone();
    let boot = |next: &mut LifecycleState, to: MachineStatus, prev: MachineStatus| {
        next.status = to;
        next.previous_status = Some(prev);
        vec![IssueMachineToken, PowerCycle, StartWatchdog]
    };
    let effects = match action {
        Action::Commission if matches!(s, New | Ready | Broken) || is_any_failed(s) => {
            // A failed machine returns to New or Ready, never to its failure.
            let back = if state.commissioned && s != New {
                Ready
            } else {
                New
            };
            // Commissioning returns the machine to the pool.
            next.owner = None;
            boot(
                &mut next,
                Commissioning,
                if s == Ready || s == New { s } else { back },
            )
        }
        Action::Test if state.commissioned && matches!(s, Ready | Broken | FailedTesting) => boot(
            &mut next,
            Testing,
            if s == FailedTesting { Ready } else { s },
        ),
        Action::Allocate { owner } if s == Ready => {
            next.status = Allocated;
            next.owner = Some(owner.clone());
            vec![]
        }
        Action::Deploy { owner } if matches!(s, Ready | Allocated | FailedDeployment) => {
            if s == Ready {
                next.owner = Some(owner.clone());
            }
            boot(&mut next, Deploying, Allocated)
        }
        Action::Release { erase }
            if matches!(
                s,
                Allocated | Deployed | FailedDeployment | FailedReleasing | FailedDiskErasing
            ) =>
        {
            next.erase = *erase;
            next.previous_status = Some(s);
            if *erase == EraseMode::None {
                next.status = Releasing;
                vec![RevokeMachineToken, PowerOff, StartWatchdog]
            } else {
                next.status = DiskErasing;
                vec![IssueMachineToken, PowerCycle, StartWatchdog]
            }
        }
        Action::Abort if matches!(s, Commissioning | Testing | EnteringRescueMode) => {
            next.status = state.previous_status.unwrap_or(New);
            vec![RevokeMachineToken, StopWatchdog, PowerOff]
        }
        Action::Abort if s == Deploying => {
            next.status = Allocated;
            vec![RevokeMachineToken, StopWatchdog, PowerOff]
        }
        Action::Abort if s == DiskErasing => {
            next.status = FailedDiskErasing;
            vec![RevokeMachineToken, StopWatchdog, PowerOff]
        }
        Action::MarkBroken { .. } if s != Broken => {
            next.status = Broken;
            next.previous_status = Some(s);
            if s.is_in_progress() {
                vec![RevokeMachineToken, StopWatchdog]
            } else {
                vec![]
            }
        }
        Action::MarkFixed if s == Broken => {
            next.status = match state.previous_status {
                Some(Deployed) => Deployed,
                Some(Allocated) => Allocated,
                _ if state.commissioned => Ready,
                _ => New,
            };
            if matches!(next.status, Ready | New) {
                next.owner = None;
            }
            next.previous_status = None;
            vec![]
        }
        Action::Rescue
            if matches!(s, Ready | Allocated | Deployed | Broken) || is_any_failed(s) =>
        {
            // Re-entering after a failed attempt returns where the first began.
            let prev = if s == FailedEnteringRescueMode {
                state.previous_status.unwrap_or(Ready)
            } else {
                s
            };
            boot(&mut next, EnteringRescueMode, prev)
        }
        Action::ExitRescue if matches!(s, RescueMode | FailedExitingRescueMode) => {
            next.status = ExitingRescueMode;
            // A deployed machine goes back to its own disk; others power off.
            if state.previous_status == Some(Deployed) {
                vec![RevokeMachineToken, PowerCycle, StartWatchdog]
            } else {
                vec![RevokeMachineToken, PowerOff, StartWatchdog]
            }
        }
        Action::Succeeded => match s {
            Commissioning => {
                next.status = Ready;
                next.commissioned = true;
                next.previous_status = None;
                vec![RevokeMachineToken, StopWatchdog, PowerOff]
            }
            Testing => {
                next.status = state.previous_status.unwrap_or(Ready);
                next.previous_status = None;
                vec![RevokeMachineToken, StopWatchdog, PowerOff]
            }
            Deploying => {
                next.status = Deployed;
                next.previous_status = None;
                // The deployed OS keeps its token: its agent reports with it.
                vec![StopWatchdog]
            }
            Releasing | DiskErasing => {
                next.status = Ready;
                next.owner = None;
                next.erase = EraseMode::None;
                next.previous_status = None;
                if s == DiskErasing {
                    vec![RevokeMachineToken, StopWatchdog, PowerOff]
                } else {
                    vec![StopWatchdog]
                }
            }
            EnteringRescueMode => {
                next.status = RescueMode;
                vec![StopWatchdog]
            }
            ExitingRescueMode => {
                next.status = state.previous_status.unwrap_or(Ready);
                next.previous_status = None;
                vec![StopWatchdog]
            }
            _ => return None,
        },
        Action::Failed { .. } | Action::WatchdogExpired => {
            let twin = s.failed_twin()?;
            next.status = twin;
            // Power is left as it is, so an operator can look at the console.
            vec![StopWatchdog]
        }
        _ => return None,
    };
    Some((next, effects))
}

/// Applies `action` to a machine's lifecycle state.
pub fn apply(
    system_id: &str,
    state: &LifecycleState,
    action: &Action,
) -> Result<Transition, ModelError> {
    match step(state, action) {
        Some((next, effects)) => Ok(Transition {
            from: state.status,
            state: next,
            effects,
        }),
        None => Err(ModelError::IllegalTransition {
            system_id: system_id.to_owned(),
            action: action.name().to_owned(),
            status: state.status,
            allowed: allowed_actions(state)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        }),
    }
}

/// The user actions the state allows, plus the power actions, which every
/// status allows.
pub fn allowed_actions(state: &LifecycleState) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Action::user_actions()
        .iter()
        .filter(|a| step(state, a).is_some())
        .map(Action::name)
        .collect();
    names.extend(["power-on", "power-off", "power-query"]);
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(state: &LifecycleState, actions: &[Action]) -> LifecycleState {
        actions.iter().fold(state.clone(), |st, a| {
            apply("abc123", &st, a)
                .unwrap_or_else(|e| panic!("{e}"))
                .state
        })
    }

    #[test]
    fn full_happy_path() {
        let st = run(
            &LifecycleState::new(),
            &[
                Action::Commission,
                Action::Succeeded,
                Action::Allocate {
                    owner: "admin".into(),
                },
                Action::Deploy {
                    owner: "admin".into(),
                },
                Action::Succeeded,
            ],
        );
        assert_eq!(st.status, Deployed);
        assert!(st.commissioned);
        assert_eq!(st.owner.as_deref(), Some("admin"));
        let st = run(
            &st,
            &[Action::Release {
                erase: EraseMode::Quick,
            }],
        );
        assert_eq!(st.status, DiskErasing);
        let st = run(&st, &[Action::Succeeded]);
        assert_eq!(st.status, Ready);
        assert_eq!(st.owner, None);
    }

    #[test]
    fn commission_boots_the_machine_and_arms_the_watchdog() {
        let t = apply("abc123", &LifecycleState::new(), &Action::Commission).unwrap();
        assert_eq!(t.state.status, Commissioning);
        assert!(t.effects.contains(&Effect::PowerCycle));
        assert!(t.effects.contains(&Effect::StartWatchdog));
        assert!(t.effects.contains(&Effect::IssueMachineToken));
    }

    #[test]
    fn illegal_transition_lists_allowed_actions() {
        let err = apply(
            "abc123",
            &LifecycleState::new(),
            &Action::Deploy { owner: "a".into() },
        )
        .unwrap_err();
        match err {
            ModelError::IllegalTransition {
                action,
                status,
                allowed,
                ..
            } => {
                assert_eq!(action, "deploy");
                assert_eq!(status, New);
                assert!(allowed.contains(&"commission".to_string()));
                assert!(!allowed.contains(&"deploy".to_string()));
                assert!(allowed.contains(&"power-on".to_string()));
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn watchdog_fails_every_in_progress_status_into_its_twin() {
        for s in MachineStatus::ALL {
            let st = LifecycleState {
                status: s,
                ..LifecycleState::new()
            };
            let r = apply("abc123", &st, &Action::WatchdogExpired);
            match s.failed_twin() {
                Some(twin) => assert_eq!(r.unwrap().state.status, twin),
                None => assert!(r.is_err(), "{s} has no watchdog"),
            }
        }
    }

    #[test]
    fn abort_returns_to_where_the_operation_began() {
        let ready = LifecycleState {
            status: Ready,
            commissioned: true,
            ..LifecycleState::new()
        };
        let st = run(&ready, &[Action::Commission, Action::Abort]);
        assert_eq!(st.status, Ready);
        let st = run(
            &ready,
            &[Action::Deploy { owner: "u".into() }, Action::Abort],
        );
        assert_eq!(st.status, Allocated);
        let st = run(
            &LifecycleState {
                status: Deployed,
                ..ready.clone()
            },
            &[
                Action::Release {
                    erase: EraseMode::Full,
                },
                Action::Abort,
            ],
        );
        assert_eq!(st.status, FailedDiskErasing);
    }

    #[test]
    fn release_without_erase_is_completed_by_the_power_worker() {
        let dep = LifecycleState {
            status: Deployed,
            commissioned: true,
            owner: Some("u".into()),
            ..LifecycleState::new()
        };
        let t = apply(
            "abc123",
            &dep,
            &Action::Release {
                erase: EraseMode::None,
            },
        )
        .unwrap();
        assert_eq!(t.state.status, Releasing);
        assert_eq!(Releasing.completed_by(), Some(Completion::PowerOperation));
        assert!(t.effects.contains(&Effect::PowerOff));
    }

    #[test]
    fn rescue_round_trip_returns_to_deployed_and_reboots_to_disk() {
        let dep = LifecycleState {
            status: Deployed,
            commissioned: true,
            ..LifecycleState::new()
        };
        let st = run(&dep, &[Action::Rescue, Action::Succeeded]);
        assert_eq!(st.status, RescueMode);
        let t = apply("abc123", &st, &Action::ExitRescue).unwrap();
        assert!(t.effects.contains(&Effect::PowerCycle));
        assert_eq!(run(&t.state, &[Action::Succeeded]).status, Deployed);
    }

    #[test]
    fn broken_and_fixed() {
        let st = run(
            &LifecycleState::new(),
            &[
                Action::MarkBroken {
                    reason: "psu".into(),
                },
                Action::MarkFixed,
            ],
        );
        assert_eq!(st.status, New);
        let dep = LifecycleState {
            status: Deployed,
            commissioned: true,
            ..LifecycleState::new()
        };
        assert_eq!(
            run(
                &dep,
                &[Action::MarkBroken { reason: "x".into() }, Action::MarkFixed]
            )
            .status,
            Deployed
        );
    }

    #[test]
    fn status_names_round_trip() {
        for s in MachineStatus::ALL {
            assert_eq!(MachineStatus::parse(s.as_str()).unwrap(), s);
            assert_eq!(MachineStatus::parse(&s.to_string()).unwrap(), s);
        }
        assert!(MachineStatus::parse("flying").is_err());
    }

    fn any_action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::Commission),
            Just(Action::Test),
            Just(Action::Allocate { owner: "a".into() }),
            Just(Action::Deploy { owner: "a".into() }),
            prop_oneof![
                Just(EraseMode::None),
                Just(EraseMode::Quick),
                Just(EraseMode::Full)
            ]
            .prop_map(|erase| Action::Release { erase }),
            Just(Action::Abort),
            Just(Action::MarkBroken { reason: "r".into() }),
            Just(Action::MarkFixed),
            Just(Action::Rescue),
            Just(Action::ExitRescue),
            Just(Action::Succeeded),
            Just(Action::Failed { reason: "f".into() }),
            Just(Action::WatchdogExpired),
        ]
    }

    proptest! {
        /// Whatever happens, the invariants hold: the watchdog is armed
        /// exactly on entering an in-progress status, Ready machines have no
        /// owner, and an error always offers a way forward.
        #[test]
        fn invariants_hold_over_any_sequence(actions in proptest::collection::vec(any_action(), 0..40)) {
            let mut st = LifecycleState::new();
            for a in &actions {
                match apply("abc123", &st, a) {
                    Ok(t) => {
                        let started = t.effects.contains(&Effect::StartWatchdog);
                        prop_assert_eq!(started, t.state.status.is_in_progress(), "{:?} -> {:?}", t.from, t.state.status);
                        if !t.state.status.is_in_progress() && t.from.is_in_progress() {
                            prop_assert!(t.effects.contains(&Effect::StopWatchdog), "{:?} -> {:?} keeps the watchdog", t.from, t.state.status);
                        }
                        if t.state.status == Ready { prop_assert_eq!(&t.state.owner, &None); }
                        if t.state.status == Allocated || t.state.status == Deployed { prop_assert!(t.state.owner.is_some()); }
                        st = t.state;
                    }
                    Err(ModelError::IllegalTransition { allowed, .. }) => prop_assert!(!allowed.is_empty()),
                    Err(e) => prop_assert!(false, "unexpected error {}", e),
                }
            }
        }
    }
}
