use super::ParseError;

text_enum!(
    /// What a job does.
    JobKind, "kind", {
        /// Adopt an existing provider account: link, import and create what is missing.
        Import = "import",
        /// Compare the provider's customers with the catalog, and repair when asked.
        Reconcile = "reconcile",
    }
);

text_enum!(
    /// Where a job is in its life.
    JobStatus, "status", {
        /// Waiting for a consumer serving its provider.
        Queued = "queued",
        /// Run by a consumer under a lease.
        Running = "running",
        /// Finished; its report is complete.
        Succeeded = "succeeded",
        /// Stopped by an error; `error` says which.
        Failed = "failed",
        /// Stopped on request.
        Cancelled = "cancelled",
    }
);

impl JobStatus {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn job_statuses_and_kinds_parse_only_their_names(text in "[a-z_]{0,12}") {
            let status = JobStatus::ALL.iter().any(|s| s.as_str() == text);
            prop_assert_eq!(JobStatus::parse(&text).is_ok(), status);
            let kind = JobKind::ALL.iter().any(|k| k.as_str() == text);
            prop_assert_eq!(JobKind::parse(&text).is_ok(), kind);
        }
    }

    #[test]
    fn only_finished_statuses_are_final() {
        let finals: Vec<_> = JobStatus::ALL.iter().filter(|s| s.is_final()).collect();
        assert_eq!(
            finals,
            [
                &JobStatus::Succeeded,
                &JobStatus::Failed,
                &JobStatus::Cancelled
            ]
        );
    }
}
