// The guest worker: a piscina task entry, one guest per task. Several guests share a thread (the pool's
// concurrentTasksPerWorker) and the pool runs with atomics disabled, so between and during tasks the thread keeps
// serving its event loop: grant-return messages, comlink replies, other guests' loops.
import { runGuestTask, type GuestReport, type GuestTask } from './loop.js';

/** Runs one guest from boot to shutdown; resolves with its report (failures are in the report, never thrown). */
export default function guest(task: GuestTask): Promise<GuestReport> {
  return runGuestTask(task);
}
