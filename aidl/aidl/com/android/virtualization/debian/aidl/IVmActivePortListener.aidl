// The app's listener, called by the guest whenever its listening ports change.
package com.android.virtualization.debian.aidl;

import com.android.virtualization.debian.aidl.ActivePort;

oneway interface IVmActivePortListener {
    void reportActivePorts(in List<ActivePort> ports);
}
