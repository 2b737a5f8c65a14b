namespace XenDisk.TestFrontend;

/// <summary>
/// Receives a request's status on the ring's completion thread. The request's slot is already free
/// when this runs, so the receiver may submit again from here (the load generator does).
/// </summary>
internal interface IRequestCompletion
{
    void OnCompleted(int token, short status);
}
