// The guest's service on vsock port 4000 (AIDL mode). Method order fixes the
// transaction codes 1..5: see docs/android-releases.md §2.2.
package com.android.virtualization.debian.aidl;

import com.android.virtualization.debian.aidl.IVmActivePortListener;

interface IDebianService {
    const int VSOCK_PORT = 4000;

    oneway void setVmActivePortListener(IVmActivePortListener listener);
    oneway void requestForwarding(int guestTcpPort, int vsockPort);
    oneway void requestStorageBalloon(long availableBytes);
    oneway void updateClipboard(String text);
    String readClipboard();
}
