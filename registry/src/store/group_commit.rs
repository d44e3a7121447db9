//! Group commit for a redb database: write jobs from many tasks share one
//! durable commit (one fsync) when they arrive together.
//!
//! One thread owns the writing. It takes a job, then every job already
//! waiting (at most [`MAX_BATCH`]), runs them in one write transaction and
//! commits once. When a job fails, the batch's transaction is dropped
//! (nothing of it is written) and each job runs again alone, so a job is
//! still all or nothing, and one job's failure never fails another's. Jobs
//! are `FnMut` for that second run.

use std::any::Any;
use std::sync::mpsc;
use std::sync::{Arc, Weak};

use redb::{Database, WriteTransaction};

/// Most jobs in one transaction.
pub const MAX_BATCH: usize = 64;

type Output = Result<Box<dyn Any + Send>, String>;
type Work = Box<dyn FnMut(&WriteTransaction, u64) -> Output + Send>;

struct Job {
    work: Work,
    reply: tokio::sync::oneshot::Sender<Output>,
}

/// The writer of one database; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    jobs: mpsc::Sender<Job>,
}

impl GroupCommit {
    /// Starts the writing thread of `db`; it ends when every clone is
    /// dropped. It holds the database only while it writes, so the file is
    /// closed as soon as its owner lets go of it (and can be opened again).
    pub fn start(db: &Arc<Database>, now: fn() -> u64) -> Self {
        let (jobs, rx) = mpsc::channel::<Job>();
        let db: Weak<Database> = Arc::downgrade(db);
        std::thread::Builder::new()
            .name("taskmesh-task-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    let Some(open) = db.upgrade() else {
                        for job in batch {
                            let _ = job.reply.send(Err("the task store is closed".into()));
                        }
                        continue;
                    };
                    let replies = run_batch(&open, batch, now());
                    // Let go of the database before anyone hears back, so a
                    // caller that then closes it really closes the file.
                    drop(open);
                    for (reply, out) in replies {
                        let _ = reply.send(out);
                    }
                }
            })
            .expect("spawn the task store's writer");
        GroupCommit { jobs }
    }

    /// Runs `work` in a write transaction (perhaps shared with others) and
    /// returns its result once that transaction is durable.
    pub async fn run<T: Send + 'static>(
        &self,
        mut work: impl FnMut(&WriteTransaction, u64) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let work: Work = Box::new(move |txn, now| {
            work(txn, now).map(|out| Box::new(out) as Box<dyn Any + Send>)
        });
        self.jobs
            .send(Job { work, reply })
            .map_err(|_| "the task store's writer stopped".to_string())?;
        let out = answer
            .await
            .map_err(|_| "the task store's writer stopped".to_string())??;
        out.downcast::<T>()
            .map(|b| *b)
            .map_err(|_| "the task store's writer returned another type".to_string())
    }
}

type Reply = (tokio::sync::oneshot::Sender<Output>, Output);

fn run_batch(db: &Database, mut batch: Vec<Job>, now: u64) -> Vec<Reply> {
    if batch.len() > 1 {
        if let Ok(txn) = db.begin_write() {
            let mut outs = Vec::with_capacity(batch.len());
            for job in &mut batch {
                match (job.work)(&txn, now) {
                    Ok(out) => outs.push(out),
                    Err(_) => break,
                }
            }
            if outs.len() == batch.len() {
                return match txn.commit() {
                    Ok(()) => batch
                        .into_iter()
                        .zip(outs)
                        .map(|(job, out)| (job.reply, Ok(out)))
                        .collect(),
                    Err(e) => batch
                        .into_iter()
                        .map(|job| (job.reply, Err(e.to_string())))
                        .collect(),
                };
            }
            // A job failed: the shared transaction is dropped (aborted).
        }
    }
    batch
        .into_iter()
        .map(|mut job| {
            let out = run_alone(db, &mut job.work, now);
            (job.reply, out)
        })
        .collect()
}

fn run_alone(db: &Database, work: &mut Work, now: u64) -> Output {
    let txn = db.begin_write().map_err(|e| e.to_string())?;
    let out = work(&txn, now)?;
    txn.commit().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, TableDefinition};

    const T: TableDefinition<u64, u64> = TableDefinition::new("t");

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn jobs_share_commits_and_a_failing_one_fails_alone() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Database::create(dir.path().join("g.redb")).unwrap());
        let writer = GroupCommit::start(&db, || 7);
        let jobs: Vec<_> = (0..40u64)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .run(move |txn, now| {
                            assert_eq!(now, 7);
                            txn.open_table(T)
                                .unwrap()
                                .insert(i, i * 10)
                                .map_err(|e| e.to_string())?;
                            if i == 13 {
                                return Err("thirteen".to_string());
                            }
                            Ok(i)
                        })
                        .await
                })
            })
            .collect();
        for (i, job) in jobs.into_iter().enumerate() {
            let out = job.await.unwrap();
            if i == 13 {
                assert_eq!(out, Err("thirteen".to_string()));
            } else {
                assert_eq!(out, Ok(i as u64));
            }
        }
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(T).unwrap();
        for i in 0..40u64 {
            let stored = table.get(i).unwrap().map(|v| v.value());
            assert_eq!(stored, (i != 13).then_some(i * 10), "row {i}");
        }
    }
}
