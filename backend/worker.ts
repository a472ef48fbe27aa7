// The backend domain's worker: builds dom0 (stack, netback, oracle) from workerData, exposes its control plane
// over comlink, probes the vifs and runs the softirq loop until the toolstack calls finish().
import { workerData } from 'node:worker_threads';
import * as Comlink from 'comlink';
import nodeEndpoint from 'comlink/dist/esm/node-adapter.mjs';
import { EvtchnHost } from '../shared/evtchn.js';
import { XenstoreClient } from '../shared/xenstore-client.js';
import { BackendRuntime, Dom0Backend, type BackendApi, type BackendInit } from './loop.js';

const init = workerData as BackendInit;
const evtchn = EvtchnHost.attach(init.evtchn);
if (!evtchn.ok) throw new Error(`backend: event channels: ${evtchn.error}`);
const runtime = new BackendRuntime(new Dom0Backend(init.config), evtchn.value.domain(init.config.domid), XenstoreClient.remote(init.xenstore));
// finish() answers, then the control port and the xenstore connection close and the worker exits by itself.
const api: BackendApi = { ...runtime.api, finish: () => runtime.finish().finally(() => setImmediate(() => (runtime.close(), init.control.close()))) };
Comlink.expose(api, nodeEndpoint(init.control));
await runtime.start();
