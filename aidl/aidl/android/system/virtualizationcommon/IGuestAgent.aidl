// The guest's agent object, handed to the host in registerGuestAgent. Only
// shutdownAsync is ours to answer; its code is 2 in every known version.
package android.system.virtualizationcommon;

interface IGuestAgent {
    oneway void shutdownAsync() = 1;
}
