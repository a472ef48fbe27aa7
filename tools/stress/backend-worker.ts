// The backend worker of a stress run: the backend domain exactly as backend/worker.ts builds it, plus the adversary
// host (./adversary.ts) in the same thread, so the catalogue's hostile guests play against the live backend.
import { workerData } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { BackendRuntime, Dom0Backend, type BackendApi, type BackendInit } from '../../backend/loop.js';
import type { AdversaryResult } from '../../frontend/adversary.js';
import { EvtchnHost } from '../../shared/evtchn.js';
import { XenstoreClient } from '../../shared/xenstore-client.js';
import type { BackendHostApi } from '../toolstack.js';
import { ThreadAdversaryHost } from './adversary.js';

/** The stress backend's control plane: the backend's, plus the adversary catalogue. */
export interface StressBackendApi extends BackendApi {
  /** Plays case `index` against this backend (never throws). */
  playAdversaryCase(index: number): Promise<AdversaryResult>;
}

const init = workerData as BackendInit;
const evtchn = EvtchnHost.attach(init.evtchn);
if (!evtchn.ok) throw new Error(`backend: event channels: ${evtchn.error}`);
const runtime = new BackendRuntime(new Dom0Backend(init.config), evtchn.value.domain(init.config.domid), XenstoreClient.remote(init.xenstore));
const host = init.host === undefined ? null : Comlink.wrap<BackendHostApi>(nodeEndpoint(init.host));
const adversary = host === null ? null : new ThreadAdversaryHost(runtime, evtchn.value, host);
const api: StressBackendApi = {
  ...runtime.api,
  // The honest guests leave first; then finish() answers, the ports close and the worker exits by itself.
  finish: async () => {
    await adversary?.shutdown();
    return runtime.finish().finally(() =>
      setImmediate(() => {
        runtime.close();
        if (host !== null) host[Comlink.releaseProxy]();
        init.host?.close();
        init.control.close();
      }),
    );
  },
  playAdversaryCase: (index) =>
    adversary === null
      ? Promise.resolve({ name: `case ${index}`, handled: false, detail: 'no adversary host (the backend has no toolstack channel)', backendCrashed: false, premise: null })
      : adversary.play(index),
};
Comlink.expose(api, nodeEndpoint(init.control));
await runtime.start();
