// The simulated hypervisor's public face: the factory and its options.
export { createSimDriver, type SimDriver, type SimDriverOptions } from './driver.ts';
export { realClock, type SimClock } from './clock.ts';
