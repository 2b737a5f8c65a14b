namespace XenDisk.Backend.ControlPlane;

/// <summary>
/// A device cannot be set up or connected because of what the toolstack or the frontend wrote (or
/// because its disk or ring could not be opened). The message is for operators: it becomes the
/// device's xenstore "error" node and a log line. Control path only; never thrown on the data path.
/// </summary>
internal sealed class DeviceSetupException : Exception
{
    public DeviceSetupException(string message, Exception? inner = null)
        : base(message, inner)
    {
    }
}
