// virtmgr's per-VM service (vsock CID 2, port = the guest's CID). The numbered
// form: registerGuestAgent = code 2. An older unnumbered form used code 9.
package android.system.virtualmachineservice;

import android.system.virtualizationcommon.IGuestAgent;

interface IVirtualMachineService {
    void registerGuestAgent(in IGuestAgent guestAgent) = 1;
}
