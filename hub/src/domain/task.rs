//! Store tasks, pure: their statuses and moves, and how a device's report
//! maps onto them.

use storegate_protocol::event::TaskStatus as Reported;

use super::machine::{Machine, states};

states! {
    /// Where a task sent to a store is.
    pub enum TaskStatus: "task" {
        /// Sent to the store.
        Assigned = "assigned",
        /// A device took it.
        Accepted = "accepted",
        /// Being worked on.
        InProgress = "in_progress",
        /// Finished.
        Done = "done",
        /// Could not be finished.
        Failed = "failed",
        /// Withdrawn by the hub (its order was cancelled).
        Cancelled = "cancelled",
    }
}

impl Machine for TaskStatus {
    fn can_become(self, to: Self) -> bool {
        use TaskStatus::*;
        match self {
            Assigned => matches!(to, Accepted | InProgress | Done | Failed | Cancelled),
            // Repeated reports carry progress on the lines.
            Accepted => matches!(to, Accepted | InProgress | Done | Failed | Cancelled),
            InProgress => matches!(to, InProgress | Done | Failed | Cancelled),
            Done | Failed | Cancelled => false,
        }
    }
}

impl TaskStatus {
    /// The states a store still works on.
    pub const OPEN: [TaskStatus; 3] = [TaskStatus::Assigned, TaskStatus::Accepted, TaskStatus::InProgress];

    /// What a device reported.
    pub fn reported(r: Reported) -> TaskStatus {
        match r {
            Reported::Accepted => TaskStatus::Accepted,
            Reported::InProgress => TaskStatus::InProgress,
            Reported::Done => TaskStatus::Done,
            Reported::Failed => TaskStatus::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_go_forward_and_finish_once() {
        use TaskStatus::*;
        assert!(Assigned.can_become(Done));
        assert!(InProgress.can_become(InProgress), "progress reports repeat");
        assert!(
            !InProgress.can_become(Accepted),
            "a late `accepted` does not move it back"
        );
        assert!([Done, Failed, Cancelled].iter().all(|s| s.is_final()));
        assert_eq!(TaskStatus::sources(Cancelled), TaskStatus::OPEN.to_vec());
        assert_eq!(TaskStatus::reported(Reported::Failed), Failed);
    }
}
