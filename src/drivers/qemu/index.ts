// The QEMU driver's public face: the driver factory and the image helpers control uses for volumes.
export { createQemuDriver, type QemuDriverOptions } from './driver.ts';
export { inspectImage, checkImage, ensureDisk, resizeVolume, deleteVolume, type ImageInfo } from './images.ts';
export { QmpClient, QmpError, QmpClosedError, QmpTimeoutError, type QmpEvent } from './qmp.ts';
