// Structured parcelable: int32 size, then the fields in this order. Declared
// nested in IVmActivePortListener by the app; nesting does not reach the wire.
package com.android.virtualization.debian.aidl;

parcelable ActivePort {
    int port;
    String comm;
}
